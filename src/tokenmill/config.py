"""The run configuration: YAML validated into typed models, with `--set key=value` overrides.

One YAML file describes a run, one section per stage. Unknown keys are errors that name the
key: a typo in a config must not silently fall back to a default. The configs that ship with
tokenmill (`quickstart`, `gpt2-small`) are package data, named on the command line without a path.
"""

from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import xxhash
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenmill.align.config import AlignConfig
from tokenmill.curate.config import CurateConfig
from tokenmill.deploy.quant.config import QuantizeConfig
from tokenmill.errors import ConfigError
from tokenmill.eval.config import EvalConfig
from tokenmill.model.section import ModelSection
from tokenmill.overrides import apply_override, parse_override
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.sources.local import LocalCorpusSource
from tokenmill.sources.registry import SOURCE_KINDS, AnySource
from tokenmill.tokenizer.config import EncodeConfig, TokenizerConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    """Stage 01: which sources to read, each tagged with its domain."""

    sources: list[AnySource] = Field(default_factory=lambda: [LocalCorpusSource()], min_length=1)
    shard_bytes: int = Field(64_000_000, gt=0, description="Uncompressed bytes per output shard.")


class RunConfig(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    run_dir: str | None = Field(None, description="Where the run folder goes; default runs/NAME.")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    model: ModelSection = Field(default_factory=ModelSection)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(error: ValidationError, where: str) -> str:
    lines = []
    for e in error.errors():
        # A tagged union puts the chosen kind into the path (sources[0].jsonl.paths): drop it,
        # the user wrote sources[0].paths.
        loc = [p for i, p in enumerate(e["loc"]) if not (p in SOURCE_KINDS and i > 0 and isinstance(e["loc"][i - 1], int))]
        key = _format_loc(tuple(loc))
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            lines.append(f"{key}: {e['msg']}")
    return f"invalid config {where}:\n  " + "\n  ".join(lines)


# Package data, read through importlib.resources so that an installed wheel finds it from any folder.
SHIPPED_CONFIGS = files("tokenmill") / "configs"


def shipped_config_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in SHIPPED_CONFIGS.iterdir() if p.name.endswith(".yaml"))


def shipped_config(name: str) -> Traversable:
    """The config that ships with tokenmill under `name` (e.g. 'quickstart')."""
    config = SHIPPED_CONFIGS / f"{name}.yaml"
    if "/" in name or "\\" in name or not config.is_file():
        raise ConfigError(
            f"no config file '{name}' and no shipped config of that name; "
            f"the shipped configs are: {', '.join(shipped_config_names())} (or give the path of a YAML file)"
        )
    return config


def find_config(config: str | Path | Traversable) -> Traversable:
    """CONFIG as given: a YAML file, or, when no such file exists, the bare name of a shipped config."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file() and path.name == str(config) and path.suffix not in (".yaml", ".yml"):
            return shipped_config(str(config))
        return path
    return config


def read_config_text(config: str | Path | Traversable) -> tuple[str, Traversable]:
    """The YAML text of CONFIG (see find_config), and where it was found."""
    source = find_config(config)
    if not source.is_file():
        raise ConfigError(
            f"config file not found: {source} (a shipped config is named without a path: {', '.join(shipped_config_names())})"
        )
    return source.read_text(encoding="utf-8"), source


def read_config_tree(config: str | Path | Traversable) -> tuple[dict, Traversable]:
    """The YAML mapping of CONFIG (see find_config), and where it was found."""
    text, source = read_config_text(config)
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return tree, source


def load_config(config: str | Path | Traversable | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (see find_config; the defaults when `config` is None) and apply overrides."""
    tree: dict = {}
    where = "(defaults)"
    if config is not None:
        tree, source = read_config_tree(config)
        where = str(source)
        tree.setdefault("name", Path(source.name).stem)
    # Sections that the user named but left empty are default sections.
    tree = {k: ({} if v is None else v) for k, v in tree.items()}
    for item in overrides:
        apply_override(tree, *parse_override(item))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e, where)) from None


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def section_hash(config: RunConfig, section: str) -> str:
    """A hash of one stage's settings (and the seed): it changes exactly when the stage must re-run."""
    payload = {"seed": config.seed, section: getattr(config, section).model_dump(mode="json")}
    return xxhash.xxh3_64(json.dumps(payload, sort_keys=True).encode()).hexdigest()
