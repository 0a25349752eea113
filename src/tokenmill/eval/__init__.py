"""Evaluation through lm-evaluation-harness: `tokenmill.eval.lm` registers the lm-eval model type
`tokenmill`; `python -m tokenmill.eval` is lm-eval's own command line with it. lm-eval (the
`eval` extra) is imported only when the model type is asked for, so that the run configuration,
which holds the `eval` section, loads without it."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "TokenmillLM":
        from tokenmill.eval.lm import TokenmillLM

        return TokenmillLM
    raise AttributeError(f"module 'tokenmill.eval' has no attribute {name!r}")


__all__ = ["TokenmillLM"]
