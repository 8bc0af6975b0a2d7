"""LoRA fine-tuning on 2 Ray Train workers (FSDP2, gloo): DeepLoc improves over the untrained head, the run is
an MLflow child of the pre-training run it starts from, and a stopped-then-resumed run reproduces the
uninterrupted one exactly. Three ``TorchTrainer.fit`` calls in all (~20 s fixed cost each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from protclip.config import load_config
from protclip.finetune.config import FinetuneConfig
from protclip.paths import REPO_ROOT

pytestmark = pytest.mark.ray


def _cfg(tmp: Path, source: str, deeploc: Path, **extra: str) -> FinetuneConfig:
    overrides = {
        "base.source": source, "data.path": str(deeploc), "data.max_rows": "480", "data.max_length": "64",
        "task.class_weighting": "none", "train.strategy": "fsdp2", "train.cpus_per_worker": "0.5",
        "train.batch_size": "8", "train.epochs": "2", "train.lr": "3e-3", "train.eval_every": "8",
        "run.storage_path": str(tmp / "runs"), "tracking.uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment": "ft-test", **extra,
    }  # fmt: skip
    return load_config(FinetuneConfig, REPO_ROOT / "jobs" / "configs" / "deeploc_lora.yaml", overrides)


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
    """A tiny exported tower plus an MLflow "pre-training" run pointing at its run folder as jobs/pretrain.py does
    (tag ``protclip.run_uri`` = ``<storage_path>/<name>``, which holds ``export/protein``)."""
    from transformers import EsmModel

    from protclip.model.config import RandomTowerConfig
    from protclip.model.towers import tiny_esm_config
    from protclip.tracking import RunLogger, TrackingConfig, open_run

    tmp = tmp_path_factory.mktemp("ft_ray")
    torch.manual_seed(0)
    geom = RandomTowerConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    EsmModel(tiny_esm_config(geom), add_pooling_layer=False).save_pretrained(tmp / "export" / "protein")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run_id = open_run(TrackingConfig(uri=uri, experiment="ft-test"), "pretrain")
    RunLogger(run_id, uri).set_tags({"protclip.run_uri": str(tmp)})
    return tmp, run_id


@pytest.fixture(scope="module")
def straight_run(ray_local, pretrain, shared_data):
    from protclip.recipes.finetune_lora import run_finetune

    tmp, run_id = pretrain
    cfg = _cfg(tmp, f"mlflow:{run_id}", shared_data / "benchmarks/deeploc1_la/deeploc_test_set.fasta",
               **{"run.name": "straight"})
    return cfg, run_finetune(cfg)


def test_two_worker_deeploc_finetune_improves_and_links_to_pretraining(straight_run, pretrain):
    from mlflow.tracking import MlflowClient
    from peft import PeftModel
    from transformers import EsmForSequenceClassification

    tmp, pre_id = pretrain
    cfg, m = straight_run
    assert m["test/loss"] < m["untrained/test/loss"] - 0.02, m
    assert m["test/accuracy"] > m["untrained/test/accuracy"], m
    assert 0 < m["model/trainable_share"] < 1
    export = tmp / "runs" / "straight" / "export"
    for f in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "merged/config.json",
              "metrics.json", "test_predictions.parquet"):
        assert (export / f).is_file(), f
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    run = client.get_run(m["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == pre_id and run.info.status == "FINISHED"
    assert "test/accuracy" in run.data.metrics and "untrained/test/loss" in run.data.metrics
    assert [a.path for a in client.list_artifacts(m["run_id"], "adapter")]
    # the adapter loads with plain peft on the exported tower
    base = EsmForSequenceClassification.from_pretrained(str(tmp / "export" / "protein"), num_labels=10)
    PeftModel.from_pretrained(base, str(export / "adapter"))


def test_resume_reproduces_the_uninterrupted_run(straight_run, pretrain, shared_data):
    from safetensors.torch import load_file

    from protclip.recipes.finetune_lora import run_finetune

    tmp, run_id = pretrain
    deeploc = shared_data / "benchmarks/deeploc1_la/deeploc_test_set.fasta"
    first = run_finetune(_cfg(tmp, f"mlflow:{run_id}", deeploc, **{"run.name": "resumed", "train.stop_at_step": "12"}))
    assert first["step"] == 12 and "test/loss" not in first
    second = run_finetune(_cfg(tmp, f"mlflow:{run_id}", deeploc, **{"run.name": "resumed"}))
    _, straight = straight_run
    # same machine, data, RNG and pinned worker threads: the same computation in the same order, so no rounding
    # budget applies (and none could bound a trajectory, where a first difference grows with every step)
    for k in ("test/loss", "test/accuracy", "valid/loss", "train/loss", "selected_step"):
        assert second[k] == straight[k], k
    a = load_file(tmp / "runs" / "straight" / "export" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp / "runs" / "resumed" / "export" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
