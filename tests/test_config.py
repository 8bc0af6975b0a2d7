"""The typed config system: YAML + dotted overrides, clear errors for unknown keys and bad values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from protclip.config import ConfigError, cli_config, dump_yaml, flatten, load_config


@dataclass
class Sampling:
    mode: Literal["none", "once", "per_epoch"] = "none"
    seed: int = 0
    exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.exponent < 0:
            raise ValueError("exponent must be >= 0")


@dataclass
class Data:
    uri: str = "data/"
    sampling: Sampling = field(default_factory=Sampling)
    columns: list[str] = field(default_factory=lambda: ["sequence", "text"])
    limit: int | None = None


@dataclass
class Root:
    data: Data = field(default_factory=Data)
    steps: int = 10
    flag: bool = False


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  uri: s3://b/x\n  sampling:\n    mode: once\nsteps: 5\n")
    cfg = load_config(Root, p, ["--data.sampling.seed", "7", "--flag=true", "--data.columns", "[a, b]"])
    assert cfg.data.uri == "s3://b/x"
    assert cfg.data.sampling.mode == "once"
    assert cfg.data.sampling.seed == 7 and isinstance(cfg.data.sampling.seed, int)
    assert cfg.flag is True and cfg.steps == 5
    assert cfg.data.columns == ["a", "b"]


def test_cli_config_and_roundtrip(tmp_path):
    cfg = cli_config(Root, ["--steps", "3", "--data.limit", "null"])
    assert cfg.steps == 3 and cfg.data.limit is None
    p = tmp_path / "dump.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(Root, p) == cfg
    flat = flatten(cfg)
    assert flat["data.sampling.seed"] == 0 and flat["data.columns"] == '["sequence", "text"]'


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["--data.sampling.sed", "7"], "data.sampling.sed"),
        (["--steps", "ten"], "steps: expected an integer"),
        (["--data.sampling.mode", "twice"], "not one of"),
        (["--data.sampling.exponent", "-1"], "exponent must be >= 0"),
        (["--flag", "maybe"], "expected true/false"),
        (["--steps"], "has no value"),
    ],
)
def test_bad_overrides_are_clear(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(Root, None, overrides)
    assert needle in str(e.value)


def test_unknown_yaml_key_suggests(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  samplng: {seed: 1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(Root, p)
    msg = str(e.value)
    assert "data.samplng" in msg and "sampling" in msg and str(p) in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Root, tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Root, p)


@pytest.mark.parametrize(
    ("job", "yaml_text", "overrides", "old", "new"),
    [
        ("pretrain", "model:\n  max_protein_length: 200\n", [], "model.max_protein_length", "data.max_protein_length"),
        ("pretrain", "", ["--model.max_text_length", "64"], "model.max_text_length", "data.max_text_length"),
        ("pretrain", "", ["--model.max_subtext_length", "64"], "model.max_subtext_length", "data.max_subtext_length"),
        ("pretrain", "model:\n  gradient_checkpointing: true\n", [], "model.gradient_checkpointing",
         "train.activation_checkpointing"),
        ("finetune", "train:\n  gradient_checkpointing: true\n", [], "train.gradient_checkpointing",
         "train.activation_checkpointing"),
        ("finetune", "", ["--train.gradient_checkpointing", "true"], "train.gradient_checkpointing",
         "train.activation_checkpointing"),
    ],
)
def test_moved_keys_name_their_new_place(tmp_path, job, yaml_text, overrides, old, new):
    """A config written before a key moved fails with the key's new dotted name, in YAML and as an override."""
    from protclip.finetune.config import FinetuneConfig
    from protclip.recipes.pretrain import PretrainConfig

    root = PretrainConfig if job == "pretrain" else FinetuneConfig
    p = tmp_path / "c.yaml"
    p.write_text(("data:\n  uri: x\n" if job == "pretrain" else "") + yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(root, p, overrides)
    assert f"unknown config key '{old}'" in str(e.value) and f"did you mean {new}?" in str(e.value)


def test_lengths_and_activation_checkpointing_are_set_once():
    """Sequence lengths live only in the data section and reach the collator from there; one checkpointing switch."""
    from dataclasses import fields

    from protclip.data.collate import CollateConfig
    from protclip.finetune.config import FinetuneTrainConfig
    from protclip.model.config import ModelConfig, collate_config
    from protclip.recipes.pretrain import PretrainConfig
    from protclip.train.config import TrainConfig

    lengths = ("max_protein_length", "max_text_length", "max_subtext_length")
    assert not {f.name for f in fields(ModelConfig)} & {*lengths, "gradient_checkpointing"}
    cfg = load_config(PretrainConfig, None, ["--data.uri", "x", "--data.max_protein_length", "200",
                                             "--data.max_text_length", "100", "--data.max_subtext_length", "50"])
    cc = collate_config(cfg.model, cfg.loss, data_cfg=cfg.data)
    assert isinstance(cc, CollateConfig) and [getattr(cc, k) for k in lengths] == [200, 100, 50]
    for section in (TrainConfig, FinetuneTrainConfig):
        names = {f.name for f in fields(section)}
        assert "activation_checkpointing" in names and "gradient_checkpointing" not in names


def test_config_sections_are_keyword_only():
    from protclip.model.config import ModelConfig

    with pytest.raises(TypeError):
        ModelConfig("paper")  # type: ignore[misc]


def test_evaluation_reads_the_lengths_from_the_run_config(tmp_path):
    """Eval embeds with the lengths the run trained with: the run config's data section (defaults without one)."""
    from protclip.config import dump_yaml
    from protclip.data.config import DataConfig, tiny_data_config
    from protclip.eval.protclip_embedder import ProtCLIPEmbedder
    from protclip.model.config import tiny_model_config
    from protclip.model.protclip import build_model
    from protclip.pretrained import data_config_from_file
    from protclip.recipes.pretrain import PretrainConfig

    run = tmp_path / "config.yaml"
    run.write_text(dump_yaml(PretrainConfig(data=tiny_data_config(uri="x", max_protein_length=40),
                                            model=tiny_model_config())))
    assert data_config_from_file(run).max_protein_length == 40
    bare = tmp_path / "model.yaml"
    bare.write_text("model:\n  projection_dim: 32\n")
    assert data_config_from_file(bare) == DataConfig()
    emb = ProtCLIPEmbedder(build_model(tiny_model_config()), device="cpu", data_cfg=data_config_from_file(run))
    assert (emb.tower.max_residues, emb.max_text_length) == (38, 128)
