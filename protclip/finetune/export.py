"""End-of-run outputs of a LoRA job: the PEFT adapter, the merged model, metrics and test predictions.

The trained tensors are gathered unsharded onto rank 0 (``full_state_dict`` over trainable parameters only:
the adapter and head, a few MB), loaded into a fresh, unwrapped peft model built the same way, and written
with peft's own ``save_pretrained``, so the files are exactly what ``PeftModel.from_pretrained`` expects.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from protclip.finetune.config import FinetuneConfig
from protclip.finetune.model import TaskSpec, attach_lora, build_task_model, save_adapter, save_merged
from protclip.storage import StorageConfig, filesystem, is_remote, join

_log = logging.getLogger(__name__)


def gather_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: full (unsharded) CPU copies of the trainable tensors; complete on rank 0."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=opts)


def rebuild_trained(tower: str, spec: TaskSpec, cfg: FinetuneConfig, trained: dict[str, torch.Tensor]):
    """A plain (unwrapped, fp32, CPU) peft model carrying the trained adapter and head."""
    model = build_task_model(tower, spec, head_dropout=cfg.task.head_dropout, revision=cfg.base.revision)
    peft_model = attach_lora(model, cfg.lora, spec)
    expected = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    got = {k: v.float() for k, v in trained.items() if k in expected}
    missing = sorted(expected - set(got))
    if missing:
        raise RuntimeError(f"gathered state lacks trained tensors {missing[:5]} (of {len(expected)})")
    peft_model.load_state_dict(got, strict=False)
    return peft_model.eval()


def write_outputs(peft_model, spec: TaskSpec, cfg: FinetuneConfig, metrics: dict[str, Any],
                  predictions: list[dict[str, Any]] | None, local_dir: Path) -> dict[str, Path]:
    """adapter/, merged/ (optional), metrics.json, test_predictions.parquet under ``local_dir``."""
    paths = {"adapter": save_adapter(peft_model, local_dir / "adapter", spec)}
    if cfg.run.save_merged:
        paths["merged"] = save_merged(peft_model, local_dir / "merged", spec)
    (local_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=float))
    paths["metrics"] = local_dir / "metrics.json"
    if predictions and cfg.run.save_predictions:
        import pandas as pd

        pd.DataFrame(predictions).to_parquet(local_dir / "test_predictions.parquet", index=False)
        paths["predictions"] = local_dir / "test_predictions.parquet"
    return paths


def publish(local_dir: Path, output_dir: str, storage: StorageConfig | None = None) -> str:
    """Copy ``local_dir``'s contents to ``output_dir`` (a local folder or an ``s3://`` prefix)."""
    if is_remote(output_dir):
        fs, path = filesystem(output_dir, storage)
        fs.put(str(local_dir).rstrip("/") + "/", path, recursive=True)
    else:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        shutil.copytree(local_dir, output_dir, dirs_exist_ok=True)
    return output_dir


def default_output_dir(cfg: FinetuneConfig) -> str:
    return cfg.run.output_dir or join(cfg.run.storage_path, cfg.run.name, "export")


def export_run(peft_model, spec: TaskSpec, cfg: FinetuneConfig, metrics: dict[str, Any],
               predictions: list[dict[str, Any]] | None, logger) -> str:
    """Rank 0: write everything to a temp dir, publish it, log adapter + metrics to MLflow."""
    out = default_output_dir(cfg)
    with tempfile.TemporaryDirectory(prefix="protclip_lora_export_") as tmp:
        paths = write_outputs(peft_model, spec, cfg, metrics, predictions, Path(tmp))
        publish(Path(tmp), out, cfg.storage)
        logger.log_artifact(paths["adapter"], "adapter")
        logger.log_artifact(paths["metrics"], "eval")
    logger.set_tags({"protclip.output_dir": out, "protclip.adapter": join(out, "adapter")})
    _log.info("adapter, merged model and metrics written to %s", out)
    return out
