import tomllib
from importlib.resources import files
from pathlib import Path, PurePosixPath

import pytest

from tokenmill.config import (
    load_config,
    section_hash,
    shipped_config,
    shipped_config_names,
)
from tokenmill.errors import ConfigError
from tokenmill.model.presets import preset_names
from tokenmill.pretrain.cli import read_sections
from tokenmill.sources.jsonl import JsonlSource
from tokenmill.sources.local import LocalCorpusSource

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_quickstart_preset_validates():
    config = load_config(shipped_config("quickstart"))
    assert config.name == "quickstart"
    assert isinstance(config.data.sources[0], LocalCorpusSource)
    assert config.data.sources[0].max_bytes == 32_000_000


def test_gpt2_small_preset_is_gpt2_at_real_size():
    config = load_config(shipped_config("gpt2-small"))
    model = config.model.resolve(config.tokenizer.vocab_size)
    assert (model.n_layers, model.d_model, model.n_heads, model.context_length) == (12, 768, 12, 1024)
    assert config.pretrain.batch_tokens == 524_288 and config.align.deploy == "dpo"


def test_a_bare_name_is_a_shipped_config_unless_a_file_has_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("quickstart") == load_config(shipped_config("quickstart"))
    assert load_config("gpt2-small", ["seed=3"]).name == "gpt2-small"
    with pytest.raises(ConfigError, match="no shipped config of that name; the shipped configs are: gpt2-small, quickstart"):
        load_config("quikstart")
    # A path (or a name with its .yaml) is a file, never a shipped config; the error says how to name one.
    for given in ("configs/quickstart.yaml", "quickstart.yaml"):
        with pytest.raises(ConfigError, match=f"config file not found: {given} .*named without a path: gpt2-small, quickstart"):
            load_config(given)
    (tmp_path / "quickstart").write_text("name: mine\n")
    assert load_config("quickstart").name == "mine"
    # `tokenmill pretrain CONFIG` reads its sections through the same lookup.
    assert read_sections("gpt2-small", [])["model"]["preset"] == "gpt2"


def test_shipped_configs_and_presets_are_package_data():
    """They are read from inside the installed package, and declared as package data so that a wheel carries them."""
    package = files("tokenmill")
    assert (package / "configs" / "quickstart.yaml").is_file() and (package / "configs" / "model" / "nano.json").is_file()
    assert {"quickstart", "gpt2-small"} <= set(shipped_config_names())
    assert {"nano", "llama-7b", "gpt2"} <= set(preset_names())
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tokenmill"]
    root = Path(str(package))
    data = [PurePosixPath(p.relative_to(root).as_posix()) for p in (root / "configs").rglob("*") if p.is_file()]
    assert len(data) > 20
    assert [str(p) for p in data if not any(p.match(glob) for glob in declared)] == []


def test_align_methods_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="ppo needs rm"):
        load_config(write(tmp_path, "align:\n  methods: [dpo, ppo]\n"))
    with pytest.raises(ConfigError, match="deploy: ppo is not among the methods"):
        load_config(write(tmp_path, "align:\n  methods: [rm, dpo]\n  deploy: ppo\n"))


def test_unknown_top_level_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'pretrian'"):
        load_config(write(tmp_path, "pretrian:\n  lr: 1\n"))


def test_unknown_nested_key_is_named_with_its_path(tmp_path):
    cfg = "data:\n  sources:\n    - kind: jsonl\n      paths: [a.jsonl]\n      txet_key: body\n"
    with pytest.raises(ConfigError, match=r"unknown key 'data.sources\[0\].txet_key'"):
        load_config(write(tmp_path, cfg))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.shard_bytes: .*integer"):
        load_config(write(tmp_path, "data:\n  shard_bytes: lots\n"))


def test_unknown_source_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"data.sources\[0\].*'csv'"):
        load_config(write(tmp_path, "data:\n  sources:\n    - kind: csv\n"))


def test_overrides_reach_nested_values_and_lists(tmp_path):
    cfg = "name: t\ndata:\n  sources:\n    - kind: jsonl\n      paths: [a.jsonl]\n"
    config = load_config(
        write(tmp_path, cfg),
        ["data.shard_bytes=1000", "data.sources.0.domain=books", "data.sources.0.text_key=body", "seed=7"],
    )
    src = config.data.sources[0]
    assert isinstance(src, JsonlSource)
    assert (config.data.shard_bytes, src.domain, src.text_key, config.seed) == (1000, "books", "body", 7)


def test_override_of_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'data.shard_byts'"):
        load_config(None, ["data.shard_byts=5"])


@pytest.mark.parametrize(
    "item, message",
    [("noequals", "KEY=VALUE"), ("data..x=1", "empty key"), ("data.sources.9.domain=web", "not an index")],
)
def test_malformed_overrides(item, message, tmp_path):
    cfg = write(tmp_path, "data:\n  sources:\n    - kind: jsonl\n      paths: [a.jsonl]\n")
    with pytest.raises(ConfigError, match=message):
        load_config(cfg, [item])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_section_hash_follows_only_its_section(tmp_path):
    base = load_config(None, ["name=a"])
    assert section_hash(base, "data") == section_hash(load_config(None, ["name=b"]), "data")
    assert section_hash(base, "data") != section_hash(load_config(None, ["data.shard_bytes=5"]), "data")
    assert section_hash(base, "data") != section_hash(load_config(None, ["seed=1"]), "data")


def test_alignment_and_pretraining_share_one_optimizer_config(tmp_path):
    from tokenmill.align.config import DpoConfig, RewardConfig, SftConfig
    from tokenmill.pretrain.config import OptimConfig, PretrainConfig

    for section in (PretrainConfig, SftConfig, RewardConfig, DpoConfig):
        assert issubclass(section, OptimConfig)
        assert set(OptimConfig.model_fields) <= set(section.model_fields)
    # The same flat keys in each section, checked alike (betas were only checked when SFT began).
    config = load_config(write(tmp_path, "pretrain:\n  lr: 0.002\n  eps: 1.0e-6\nalign:\n  sft:\n  "
                                         "  lr: 0.003\n    eps: 1.0e-6\n    decay_embeddings: true\n"))
    assert (config.pretrain.lr, config.align.sft.lr, config.align.sft.eps) == (0.002, 0.003, 1e-6)
    assert config.align.sft.decay_embeddings and config.align.dpo.lr == 1e-4
    for section in ("pretrain", "align.dpo"):
        nested = "".join(f"{'  ' * i}{key}:\n" for i, key in enumerate(section.split(".")))
        with pytest.raises(ConfigError, match=rf"{section}.betas: .*betas must lie in \[0, 1\)"):
            load_config(write(tmp_path, nested + "  " * section.count(".") + "  betas: [1.0, 0.9]\n"))
