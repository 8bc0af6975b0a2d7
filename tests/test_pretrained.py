"""protclip.pretrained (no Ray): every source form the evaluate and LoRA jobs accept resolves to the model that
wrote it, and a missing or unusable source fails with the documented one-line reason."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from protclip.eval.config import ModelSourceConfig
from protclip.finetune.config import BaseTowerConfig
from protclip.model.config import tiny_model_config
from protclip.model.protclip import build_model, export_towers
from protclip.pretrained import (
    ModelSource,
    load_model,
    local_copy,
    resolve_base,
    resolve_source,
)

HEAD = "protein_proj.0.weight"  # a head tensor moved away from its init: a wrong load would show


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    """A run folder as the pre-training job leaves it: ``config.yaml``, one committed checkpoint, ``export/``."""
    from protclip.train.checkpoint import TrainState, save_checkpoint

    run = tmp_path_factory.mktemp("pre") / "run"
    cfg = tiny_model_config()
    torch.manual_seed(5)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    save_checkpoint(run / "checkpoint_000000005_a", model, opt, None, TrainState(step=5))
    export_towers(model, run / "export")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": dataclasses.asdict(cfg)}))
    return run, cfg, model


def _no_store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'absent.db'}"  # no MLflow store: lookups find nothing and create none


def test_each_model_source_form_resolves_and_loads(pretrain_run, tmp_path):
    run, cfg, model = pretrain_run
    ckpt = run / "checkpoint_000000005_a"
    want = model.state_dict()[HEAD]
    tracking = _no_store(tmp_path)

    by_run = resolve_source(ModelSourceConfig(checkpoint=str(run)), tracking_uri=tracking)  # its latest
    by_folder = resolve_source(ModelSourceConfig(checkpoint=str(ckpt)), tracking_uri=tracking)
    for src in (by_run, by_folder):
        assert (src.kind, src.uri, src.step, src.model_cfg) == ("checkpoint", str(ckpt), 5, cfg)
    loaded, info = load_model(by_folder)
    assert info["checkpoint_step"] == 5 and info["text_tokenizer"] is not None
    assert torch.equal(loaded.state_dict()[HEAD], want)

    export = resolve_source(ModelSourceConfig(export=str(run / "export")), tracking_uri=tracking)
    assert (export.kind, export.step) == ("export", 5)  # the step of the run's latest checkpoint
    assert torch.equal(load_model(export)[0].state_dict()[HEAD], want)

    pinned = resolve_source(ModelSourceConfig(checkpoint=str(ckpt), step=42), tracking_uri=tracking)
    assert pinned.step == 42

    # mlflow_run_id: the run tagged with the run folder gives its export; one with only checkpoints gives the
    # latest of them, described by the config the run logged
    from protclip.tracking import RunLogger, TrackingConfig, open_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = open_run(TrackingConfig(uri=uri), "pretrain", {"model": dataclasses.asdict(cfg)})
    RunLogger(run_id, uri).set_tags({"protclip.run_uri": str(run)})
    via = resolve_source(ModelSourceConfig(mlflow_run_id=run_id), tracking_uri=uri)
    assert (via.kind, via.uri, via.step, via.run_id) == ("export", str(run / "export"), 5, run_id)
    only_ckpt = tmp_path / "ckpt_only"
    shutil.copytree(ckpt, only_ckpt / ckpt.name)
    run_id2 = open_run(TrackingConfig(uri=uri), "pretrain2", {"model": dataclasses.asdict(cfg)})
    RunLogger(run_id2, uri).set_tags({"protclip.run_uri": str(only_ckpt)})
    via2 = resolve_source(ModelSourceConfig(mlflow_run_id=run_id2), tracking_uri=uri)
    assert (via2.kind, via2.step, via2.model_cfg) == ("checkpoint", 5, cfg)
    # a checkpoint without a config beside it finds its architecture through the run tagged with its folder
    assert resolve_source(ModelSourceConfig(checkpoint=str(only_ckpt)), tracking_uri=uri).run_id == run_id2


def test_missing_or_unusable_model_sources_fail_clearly(pretrain_run, tmp_path):
    run, cfg, _ = pretrain_run
    tracking = _no_store(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a ProtCLIP export folder"):
        resolve_source(ModelSourceConfig(export=str(tmp_path / "empty")), tracking_uri=tracking)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder nor a run folder"):
        resolve_source(ModelSourceConfig(checkpoint=str(tmp_path / "empty")), tracking_uri=tracking)
    bare = tmp_path / "bare"  # a checkpoint with no run config anywhere and no MLflow run
    shutil.copytree(run / "checkpoint_000000005_a", bare / "checkpoint_000000005_a")
    with pytest.raises(FileNotFoundError, match="cannot tell the model architecture"):
        resolve_source(ModelSourceConfig(checkpoint=str(bare)), tracking_uri=tracking)
    gone = ModelSource("checkpoint", str(tmp_path / "removed"), cfg, 5)
    with pytest.raises(FileNotFoundError, match="no longer exists"), local_copy(gone):
        pass
    with pytest.raises(ValueError, match="needs the run's model section"):
        load_model(ModelSource("checkpoint", str(run / "checkpoint_000000005_a")))

    from protclip.tracking import TrackingConfig, open_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    empty_run = open_run(TrackingConfig(uri=uri), "nothing")
    with pytest.raises(FileNotFoundError, match="no export"):
        resolve_source(ModelSourceConfig(mlflow_run_id=empty_run), tracking_uri=uri)


def test_tower_from_logged_mlflow_artifact(pretrain_run, tmp_path):
    from mlflow.tracking import MlflowClient

    from protclip.finetune.model import load_tower
    from protclip.tracking import TrackingConfig, open_run

    run, _, model = pretrain_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = open_run(TrackingConfig(uri=uri), "pretrain")
    MlflowClient(uri).log_artifacts(run_id, str(run / "export" / "protein"), "export/protein")
    res = resolve_base(BaseTowerConfig(source=f"mlflow:{run_id}"), str(tmp_path / "base"), tracking_uri=uri)
    assert (res.kind, res.parent_run_id, res.info) == ("mlflow", run_id, {"artifact": "export/protein"})
    got = load_tower(res.tower).state_dict()
    for k, v in model.protein_tower.state_dict().items():
        if not k.startswith("contact_head"):
            assert torch.equal(got[k], v), k


def test_missing_or_unusable_tower_sources_fail_clearly(pretrain_run, tmp_path):
    run, _, _ = pretrain_run
    out = str(tmp_path / "base")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a known kind"):
        resolve_base(BaseTowerConfig(source="nope:x"), out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_base(BaseTowerConfig(source=f"protclip:{tmp_path / 'missing'}"), out)
    with pytest.raises(ValueError, match="holds no exported tower"):
        resolve_base(BaseTowerConfig(source=f"protclip:{tmp_path / 'empty'}"), out)
    with pytest.raises(ValueError, match="has no ESM config.json"):
        resolve_base(BaseTowerConfig(source=f"tower:{tmp_path / 'empty'}"), out)

    bare = tmp_path / "bare"  # a checkpoint with no pre-training config beside it and no MLflow run
    shutil.copytree(run / "checkpoint_000000005_a", bare / "checkpoint_000000005_a")
    tracking = _no_store(tmp_path)
    with pytest.raises(FileNotFoundError, match="set base.pretrain_config"):
        resolve_base(BaseTowerConfig(source=f"protclip:{bare}"), out, tracking_uri=tracking)
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_base(BaseTowerConfig(source=f"protclip:{bare}", pretrain_config=str(tmp_path / "nope.yaml")), out,
                     tracking_uri=tracking)
    wrong = tmp_path / "wrong.yaml"
    small = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
    wrong.write_text(yaml.safe_dump({"model": {"protein_model": "random", "protein_random": small}}))
    with pytest.raises(ValueError, match="does not hold a protein tower matching"):
        resolve_base(BaseTowerConfig(source=f"protclip:{bare}", pretrain_config=str(wrong)), out, tracking_uri=tracking)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from protclip.tracking import TrackingConfig, open_run

    open_run(TrackingConfig(uri=uri), "exists")  # a store, without the asked-for run
    with pytest.raises(ValueError, match="cannot read the run"):
        resolve_base(BaseTowerConfig(source="mlflow:0123456789abcdef"), out, tracking_uri=uri)


def test_run_config_saved_before_the_length_move_still_loads(tmp_path):
    """Runs saved by earlier versions wrote the lengths and the checkpointing switch into `model` as well as
    `data`: reading such a run config keeps working, while a user config with those keys fails (test_config)."""
    import yaml

    from protclip.model.config import tiny_model_config
    from protclip.pretrained import data_config_from_file, model_config_from_file

    model = {"protein_model": "random", "text_model": "random", "projection_dim": 32, "proto_num": 16,
             "max_protein_length": 130, "max_text_length": 128, "max_subtext_length": 64,
             "gradient_checkpointing": False}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": model, "data": {"max_protein_length": 130, "max_text_length": 128,
                                                             "max_subtext_length": 64}}))
    cfg = model_config_from_file(path)
    assert (cfg.projection_dim, cfg.proto_num) == (tiny_model_config().projection_dim, 16)
    assert data_config_from_file(path).max_protein_length == 130
    model["no_such_key"] = 1
    path.write_text(yaml.safe_dump({"model": model}))
    with pytest.raises(Exception, match="no_such_key"):
        model_config_from_file(path)
