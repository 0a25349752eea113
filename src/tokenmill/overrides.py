"""`--set KEY=VALUE`: one value of a nested config, named by its dotted path and read as YAML.

Every verb that takes a config (`run`, `pretrain`, the alignment verbs, `model`/`plan`) reads its
overrides here, so that `--set a.b=1` means the same everywhere. Kept apart from the run config
so a verb can take overrides without importing every stage's settings.
"""

from __future__ import annotations

from typing import Any

import yaml

from tokenmill.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """'pretrain.lr=3e-4' -> (['pretrain', 'lr'], 0.0003); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in '{item}'")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot read value '{raw}': {e}") from None
    return key.split("."), value


def apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node: Any = tree
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_index(node, k, keys[: i + 1])]
        else:
            node = node.setdefault(k, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {'.'.join(keys)}: '{'.'.join(keys[: i + 1])}' is a value, not a section")
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, keys)] = value
    else:
        node[last] = value


def _index(node: list, k: str, path: list[str]) -> int:
    try:
        i = int(k)
        node[i]
    except (ValueError, IndexError):
        raise ConfigError(f"--set {'.'.join(path)}: '{k}' is not an index of a list of {len(node)}") from None
    return i
