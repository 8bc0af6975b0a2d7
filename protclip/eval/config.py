"""Config sections of downstream evaluation: one suite entry, the periodic schedule used during pre-training
(``PretrainConfig.eval``) and the root of ``jobs/evaluate.py`` (:class:`EvaluateConfig`).

Pure (no Ray). Suite entries are validated when the config is loaded (unknown suite, unknown suite keys, bad
values), so a typo fails before a training job starts rather than in an eval task hours later. That validation
imports the suites (matplotlib, scikit-learn) lazily, on the driver and only when suites are configured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from protclip.paths import SHARED_PREFIX, resolve_shared
from protclip.storage import StorageConfig
from protclip.tracking import TrackingConfig

__all__ = [
    "EvalSuiteConfig",
    "EvalScheduleConfig",
    "ModelSourceConfig",
    "EvaluateConfig",
    "PATH_KEYS",
    "JOINT_SPACE_SUITES",
    "resolve_data_path",
]

#: suite config keys holding file paths (resolved to absolute paths on the driver before tasks get them)
PATH_KEYS = ("path", "test_path", "wt_fasta", "go_obo", "sequences_path")
#: suites that compare proteins with texts, so protein embeddings must be in the joint (projected) space
JOINT_SPACE_SUITES = ("retrieval", "zero_shot")
#: prefix of suite data paths under the shared data folder (``protclip.paths.shared_data_dir()``)
_NAME = re.compile(r"[a-z0-9_]+")


def resolve_data_path(value: str) -> str:
    """``shared:benchmarks/x.fasta`` -> under the shared data folder; relative paths -> absolute (driver cwd);
    URIs (``s3://``) unchanged."""
    if value.startswith(SHARED_PREFIX):
        return resolve_shared(value)
    if "://" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))


@dataclass(kw_only=True)
class EvalSuiteConfig:
    """One evaluation to run: a suite from ``protclip.eval.suites.SUITES`` with its config.

    Its metrics land in MLflow as ``eval/<name>/<metric>``; two entries may use the same suite under different
    names (e.g. a DeepLoc and a GO linear probe).
    """

    suite: str = ""  # registry name: retrieval | zero_shot | linear_probe | finetune_head | mutation | ppi
    name: str = ""  # label in metric names ([a-z0-9_]); default: the suite name
    # the suite's config (its dataclass fields); paths may be relative (to the job's working directory) or
    # "shared:<path under the shared data folder>"
    config: dict[str, Any] = field(default_factory=dict)
    # which protein embedding the suite sees: joint = projected CLIP space (needed to compare with texts);
    # tower = mean-pooled last layer of the protein tower (probes, PPI); auto = joint for retrieval/zero_shot
    protein_space: Literal["auto", "joint", "tower"] = "auto"
    num_cpus: float | None = None  # Ray task CPUs for this suite; None = the section's num_cpus
    num_gpus: float | None = None  # Ray task GPUs for this suite; None = the section's num_gpus

    def __post_init__(self) -> None:
        from protclip.eval.suites import SUITES, make_config

        if self.suite not in SUITES:
            raise ValueError(f"eval suite {self.suite!r} is unknown; known: {sorted(SUITES)}")
        if not self.name:
            self.name = self.suite
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"eval suite name {self.name!r} must match [a-z0-9_]+ (it becomes an MLflow key)"
            )
        if self.protein_space not in ("auto", "joint", "tower"):
            raise ValueError(
                f"eval suite {self.name}: protein_space must be auto|joint|tower, got {self.protein_space!r}"
            )
        for k in ("num_cpus", "num_gpus"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise ValueError(f"eval suite {self.name}: {k} must be >= 0, got {v}")
        try:
            make_config(self.suite, self.config)
        except (ValueError, TypeError) as e:
            raise ValueError(f"eval suite {self.name} ({self.suite}): {e}") from None

    @property
    def space(self) -> str:
        """The protein embedding space this suite gets (``auto`` resolved)."""
        if self.protein_space != "auto":
            return self.protein_space
        return "joint" if self.suite in JOINT_SPACE_SUITES else "tower"

    def resolved(self) -> EvalSuiteConfig:
        """A copy whose data paths are absolute (tasks may run with another working directory)."""
        cfg = dict(self.config)
        for k in PATH_KEYS:
            if isinstance(cfg.get(k), str) and cfg[k]:
                cfg[k] = resolve_data_path(cfg[k])
        return replace(self, config=cfg)


def _check_suites(suites: list[EvalSuiteConfig], where: str) -> None:
    names = [s.name for s in suites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(
            f"{where}: suite names must be unique, repeated: {dup} (set `name` to tell them apart)"
        )


@dataclass(kw_only=True)
class EvalScheduleConfig:
    """Periodic downstream evaluation during pre-training (``PretrainConfig.eval``).

    Each due checkpoint starts one *round*: one Ray task per suite, which loads the checkpoint, embeds in batches
    and logs into the pre-training run (see ``protclip.eval.tasks``). Training never waits for them.
    Tasks read the checkpoint where Ray Train keeps it; keep ``train.keep_checkpoints >= max_in_flight + 2`` so
    a waiting round's checkpoint is not deleted first (a deleted one is reported as a failed eval, nothing worse).
    """

    every_steps: int = 0  # evaluate the first checkpoint at or past each multiple of this step; 0 = never
    suites: list[EvalSuiteConfig] = field(default_factory=list)  # what each round runs
    num_cpus: float = 1.0  # Ray resources of each suite task (a suite entry may override)
    num_gpus: float = 0.0  # e.g. 1 or a fraction on GPU clusters; 0 = CPU (the task sees no GPU)
    device: str = "auto"  # torch device inside the task: auto = cuda when the task was given a GPU
    # rounds running at once; when busy, the newest due checkpoint waits in a single slot and replaces an older
    # waiting one (the replaced round is skipped and counted in eval/skipped_rounds): evals never pile up
    max_in_flight: int = 1
    eval_final: bool = True  # also evaluate the job's last checkpoint when training ends, even if not due
    # also evaluate the untrained model: a fresh run then checkpoints step 0 before its first update (the
    # "before" column of a before/after comparison, measured by the same suites)
    at_start: bool = False
    # with at_start: training pauses after the step-0 checkpoint until that round has ended (or after
    # start_wait_timeout_s), then starts. On a machine where eval tasks and training workers share the same few
    # cores, one after the other is faster than both at once (the demo on 2 cores: step-0 validation to step 20
    # in 289 s beside the round, 265 s with the 38 s round first); on a cluster with spare CPUs/GPUs leave it off
    wait_at_start: bool = False
    # run a round's suites one after the other in one task (one process start and model load instead of one per
    # suite; the task asks for the largest num_cpus/num_gpus of its suites): for small machines. A suite that
    # crashes the process then fails the round's remaining suites too (each is reported)
    one_task_per_round: bool = False
    start_wait_timeout_s: float = 900.0  # the longest training waits for the step-0 round (then goes on, warned)
    poll_interval_s: float = 10.0  # how often the driver looks for new checkpoints and finished tasks
    drain_timeout_s: float = 900.0  # after training, wait at most this long for running evals (then give up)

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"eval.every_steps must be >= 0, got {self.every_steps}")
        if self.every_steps > 0 and not self.suites:
            raise ValueError("eval.every_steps > 0 but eval.suites is empty: nothing to evaluate")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"eval.num_cpus/num_gpus must be >= 0, got {self.num_cpus}/{self.num_gpus}")
        if self.max_in_flight < 1:
            raise ValueError(f"eval.max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.wait_at_start and not self.at_start:
            raise ValueError("eval.wait_at_start needs eval.at_start: true (there is no step-0 round to wait for)")
        if self.start_wait_timeout_s < 0:
            raise ValueError(f"eval.start_wait_timeout_s must be >= 0, got {self.start_wait_timeout_s}")
        if self.poll_interval_s <= 0 or self.drain_timeout_s < 0:
            raise ValueError("eval.poll_interval_s must be > 0 and eval.drain_timeout_s >= 0")
        _check_suites(self.suites, "eval")

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 and bool(self.suites)


@dataclass(kw_only=True)
class ModelSourceConfig:
    """What to evaluate: exactly one of ``checkpoint``, ``export``, ``mlflow_run_id``."""

    checkpoint: str | None = (
        None  # DCP pre-training checkpoint dir (checkpoint_*), or a run folder (its latest)
    )
    export: str | None = None  # export dir: protein/ + text/ (save_pretrained) + heads.safetensors
    mlflow_run_id: str | None = None  # a pre-training run: its export, else its latest checkpoint (tags)
    # YAML/JSON run config: its `model` section describes the architecture, its `data` section the sequence
    # lengths to embed with (defaults without one); needed for a checkpoint without a run config beside it or an
    # MLflow run to read it from (exports fall back to their own files)
    model_config: str | None = None
    step: int | None = None  # training step to log against; default: the checkpoint's step (exports: 0)

    def __post_init__(self) -> None:
        given = [k for k in ("checkpoint", "export", "mlflow_run_id") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"source: set exactly one of checkpoint, export, mlflow_run_id (got {given or 'none'})"
            )
        if self.step is not None and self.step < 0:
            raise ValueError(f"source.step must be >= 0, got {self.step}")


@dataclass(kw_only=True)
class EvaluateConfig:
    """Root of ``jobs/evaluate.py``: run suites on a checkpoint, export or MLflow run and log to MLflow."""

    source: ModelSourceConfig = field(default_factory=ModelSourceConfig)  # required: give one of its three
    suites: list[EvalSuiteConfig] = field(default_factory=list)
    select: list[str] = field(default_factory=list)  # names of the suites to run; empty = all
    # MLflow run to log into; default: the source's pre-training run when known, else a new run
    run_id: str | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)  # access to s3:// checkpoints/exports
    mode: Literal["ray", "local"] = "ray"  # ray: one Ray task per suite (joins RAY_ADDRESS or starts a local
    # instance); local: all suites in this process, one model load
    num_cpus: float = 1.0  # Ray resources per suite task (a suite entry may override)
    num_gpus: float = 0.0
    device: str = "auto"  # torch device for the model (auto = cuda when visible)

    def __post_init__(self) -> None:
        if not self.suites:
            raise ValueError("suites is empty: nothing to evaluate")
        _check_suites(self.suites, "suites")
        unknown = sorted(set(self.select) - {s.name for s in self.suites})
        if unknown:
            raise ValueError(
                f"select names unknown suites {unknown}; configured: {[s.name for s in self.suites]}"
            )
        if self.mode not in ("ray", "local"):
            raise ValueError(f"mode must be 'ray' or 'local', got {self.mode!r}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")

    def chosen(self) -> list[EvalSuiteConfig]:
        return [s for s in self.suites if not self.select or s.name in self.select]
