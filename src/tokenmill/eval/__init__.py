"""Evaluation through lm-evaluation-harness: importing this package registers the lm-eval
model type `tokenmill` (lm.py); `python -m tokenmill.eval` is lm-eval's own command line with it."""

from tokenmill.eval.lm import TokenmillLM

__all__ = ["TokenmillLM"]
