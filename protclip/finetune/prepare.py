"""Driver-side preparation of a LoRA job (no Ray): base tower, data, task spec, class weights, MLflow run.

Everything the workers must agree on is decided here once (label vocabulary, splits, class weights, target
standardisation, the materialised base tower), so workers never re-derive it from data they each see in part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from protclip.finetune.config import FinetuneConfig
from protclip.finetune.data import TaskData, class_weights, load_task_data, regression_stats
from protclip.finetune.loop import JobInputs
from protclip.finetune.model import TaskSpec
from protclip.pretrained import ResolvedBase, resolve_base
from protclip.storage import join

_log = logging.getLogger(__name__)


@dataclass
class PreparedJob:
    """What the driver decided once for all workers, plus the resolved base (for the MLflow tags)."""

    job: JobInputs
    data: TaskData
    base: ResolvedBase


def run_dir(cfg: FinetuneConfig) -> str:
    """``<storage_path>/<name>``: Ray's run folder, which also holds ``base_tower/`` and ``export/``."""
    return join(cfg.run.storage_path, cfg.run.name)


def prepare(cfg: FinetuneConfig) -> PreparedJob:
    """Resolve the base, read and split the data, fix the task spec (no MLflow, no Ray)."""
    base = resolve_base(cfg.base, join(run_dir(cfg), "base_tower"), cfg.storage, seed=cfg.train.seed,
                        tracking_uri=cfg.tracking.uri)
    data = load_task_data(cfg.data, cfg.task, cfg.storage)
    mean, std = regression_stats(data) if cfg.task.type == "regression" else (0.0, 1.0)
    spec = TaskSpec(
        type=cfg.task.type,
        labels=data.label_names,
        max_length=cfg.data.max_length,
        crop=cfg.data.crop,
        threshold=cfg.task.threshold,
        target_mean=mean,
        target_std=std,
        base=base.tower,
        extra={"base_source": base.source, "base_kind": base.kind, "parent_run_id": base.parent_run_id,
               "alphabet": "esm2-33", "data": cfg.data.path, "splits": data.sizes(), **base.info},
    )
    w = class_weights(data, cfg.task.class_weighting)
    job = JobInputs(tower=base.tower, spec=spec, class_weights=None if w is None else w.tolist())
    _log.info("base %s (%s) -> %s; data %s; labels %s", base.source, base.kind, base.tower, data.sizes(),
              data.label_names[:12])
    return PreparedJob(job, data, base)
