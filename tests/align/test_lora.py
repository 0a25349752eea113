"""LoRA: the merged model computes what the adapted one does (on fp32 and INT8/INT4 base weights),
only the adapters (and a new head) learn, and every method writes an ordinary model folder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tokenmill.align.config import AlignConfig, DpoConfig, LoraConfig, PpoConfig, RewardConfig, SftConfig
from tokenmill.align.data import Conversation, Preference
from tokenmill.deploy.quant.rtn import rtn
from tokenmill.errors import ConfigError
from tokenmill.model import build_model, load_model, load_preset, tiny
from tokenmill.model.io import state_dict_for_saving
from tokenmill.model.lora import LoraLinear, adapters_disabled, apply_lora, merge_lora
from tokenmill.model.quant.grid import Scheme
from tokenmill.model.quant.io import replace_linear
from tokenmill.model.quant.linear import QuantLinear

pytestmark = pytest.mark.usefixtures("one_thread")
LORA = LoraConfig(rank=4, alpha=8.0, targets=["wqkv", "wo", "w1", "w2", "w3"])
IDS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4], [8, 6, 2, 9, 1, 1, 5, 3]])


def small_model(bits: int | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(tiny(load_preset("llama-7b"), d_model=64, vocab_size=32), device="cpu").eval()
    if bits is not None:  # the base weights as INT8 or INT4 codes, as a quantized folder loads them
        scheme = Scheme(bits=bits, group_size=32 if bits == 4 else None, symmetric=False)
        for name, m in list(model.named_modules()):
            if isinstance(m, torch.nn.Linear) and name != "output":
                replace_linear(model, name, QuantLinear.from_codes(*rtn(m.weight.detach(), scheme), scheme))
    return model


def adapted(bits: int | None) -> torch.nn.Module:
    model = small_model(bits)
    apply_lora(model, **LORA.model_dump())
    with torch.no_grad():  # B starts at zero: give the update something to say
        for m in model.modules():
            if isinstance(m, LoraLinear):
                m.lora_b.normal_(std=0.05)
    return model


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_the_merged_model_equals_the_adapted_forward(bits, monkeypatch):
    monkeypatch.setattr(QuantLinear, "use_kernels", False)  # the kernels quantize activations too
    model = adapted(bits)
    with torch.no_grad():
        expected = model(IDS)
        base = None
        with adapters_disabled(model):
            base = model(IDS)
        merge_lora(model)
        got = model(IDS)
    assert not any(isinstance(m, (LoraLinear, QuantLinear)) for m in model.modules())
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapters change the output...
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # ...and the merged weights carry it
    assert not any("lora" in k or "qweight" in k for k in state_dict_for_saving(model))


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_only_adapter_parameters_get_gradients(bits):
    model = adapted(bits)
    model.train()
    model(IDS).float().logsumexp(-1).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    adapters = {n for n, p in model.named_parameters() if "lora_" in n}
    assert with_grad == adapters and len(adapters) == 2 * 5 * 2  # A and B of five layers in each of two blocks
    # The gradient crosses the frozen (quantized) layers down to the first block's adapters.
    assert model.layers[0].attn.wqkv.lora_a.grad.abs().sum() > 0
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in adapters)


def test_targets_that_match_no_layer_are_an_error_naming_the_layers():
    with pytest.raises(ConfigError, match=r"lora.targets: no linear layer named \['q_proj'\].*'wqkv'"):
        apply_lora(small_model(None), rank=2, alpha=2, dropout=0, targets=["q_proj"])


def test_align_lora_reaches_every_method():
    config = AlignConfig.model_validate({"lora": {"rank": 2}, "rm": {"lora": None}})
    assert config.sft.lora == config.dpo.lora == config.ppo.lora == LoraConfig(rank=2)
    assert config.rm.lora is None
    assert AlignConfig().sft.lora is None


PREFS = [
    Preference([{"role": "user", "content": "What does the command wibble do?"}],
               "wibble: Print a line of wibbles.", "plonk: Drop a file into the nearest bucket."),
    Preference([{"role": "user", "content": "What is heapq.heappush for?"}],
               "heapq.heappush: Push item onto heap, maintaining the heap invariant.", "bisect.insort: Insert item x."),
]


def test_dpo_with_lora_starts_at_its_reference_and_writes_a_merged_folder(model_dir, tmp_path):
    from tokenmill.align.dpo import train_dpo

    config = DpoConfig(steps=4, batch_size=2, lr=1e-2, warmup_steps=0, lora=LORA, device="cpu",
                       logging={"backends": []})
    train_dpo(config, model_dir, PREFS * 2, PREFS, tmp_path / "dpo")
    metrics = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    # The reference is the policy with its adapters off: at step 1 every log-ratio is 0.
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    before, after = load_model(model_dir, device="cpu"), load_model(tmp_path / "dpo", device="cpu")
    changed = {n for (n, p), q in zip(before.named_parameters(), after.parameters()) if not torch.equal(p, q)}
    assert changed and all(n.rsplit(".", 2)[-2] in LORA.targets for n in changed)  # only adapted layers moved


def test_sft_rm_and_ppo_train_with_lora(model_dir, tmp_path):
    from tokenmill.align.ppo import train_ppo
    from tokenmill.align.reward import load_reward_model, train_reward_model
    from tokenmill.align.sft import train_sft

    conversations = [Conversation(p.conversations()[0]) for p in PREFS] * 2
    quiet = {"device": "cpu", "lora": LORA, "logging": {"backends": []}}
    train_sft(SftConfig(steps=2, batch_size=2, samples=0, **quiet), model_dir, conversations, conversations[:1], tmp_path / "sft")
    train_reward_model(RewardConfig(steps=2, batch_size=2, **quiet), tmp_path / "sft", PREFS * 2, PREFS, tmp_path / "rm")
    rm = load_reward_model(tmp_path / "rm", device="cpu")
    assert not any(isinstance(m, LoraLinear) for m in rm.modules())
    prompts = [p.prompt for p in PREFS] * 4
    summary = train_ppo(PpoConfig(steps=1, batch_size=4, minibatch_size=2, max_new_tokens=4, eval_prompts=2, **quiet),
                        tmp_path / "sft", tmp_path / "rm", prompts, tmp_path / "ppo")
    assert math.isfinite(summary["kl_mean"])
    load_model(tmp_path / "ppo", device="cpu")
