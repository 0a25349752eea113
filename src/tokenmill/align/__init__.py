"""Stage 06, alignment: turn the pre-trained model into an assistant.

Supervised fine-tuning (sft.py), a reward model (reward.py), DPO (dpo.py), PPO (ppo.py) and
constitutional AI (cai.py), all on conversations in the one chat template of stage 03, loaded
from the common data formats (data.py) or derived from the run's own corpus (builtin.py).
See docs/alignment.md.
"""
