"""What the pre-training loop reads: ``TrainRunConfig`` = data + model + loss + train + storage + tracking.

The job's root config (:class:`protclip.recipes.pretrain.PretrainConfig`) extends it with the periodic-eval
schedule, which the loop never reads, so this layer stays free of evaluation code. The ``storage`` section says
where checkpoints live: Ray Train keeps them under ``<storage_path>/<name>/``, and restarting a job with the same
``name`` and ``storage_path`` resumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from protclip.data.config import DataConfig
from protclip.model.config import LossConfig, ModelConfig
from protclip.storage import StorageConfig
from protclip.tracking import TrackingConfig

__all__ = ["TrainConfig", "RunStorageConfig", "TrainRunConfig"]


@dataclass(kw_only=True)
class TrainConfig:
    """Workers, optimisation, schedule, checkpoint/validation cadence and fault tolerance."""

    num_workers: int = 2  # Ray Train workers (one per GPU on GPU clusters)
    use_gpu: bool = False  # GPU workers with NCCL; False = CPU workers with gloo
    cpus_per_worker: float = 1.0  # CPU resources each worker reserves (fractions leave CPUs to Ray Data)
    accum_steps: int = 1  # micro-batches per optimizer step (feature-cache accumulation keeps all negatives)
    lr: float = 1e-5  # base LR (heads, projections, scales)
    protein_lr_ratio: float = 0.1  # protein tower LR = lr * ratio
    weight_decay: float = 0.0  # AdamW decoupled weight decay on matrices (paper: 0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup
    warmup_steps: int | None = None  # explicit warmup; None = ceil(warmup_ratio * total steps)
    warmup_ratio: float = 0.03  # HF Trainer default used by the released code
    min_lr_ratio: float = 0.0  # LR at the end of the decay, as a share of the peak
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping (the norm is still logged)
    max_steps: int | None = None  # optimizer steps; None = all data epochs (estimated from the sampled rows)
    stop_at_step: int | None = None  # end this job early at this step without changing the schedule (tests,
    # time-boxed jobs); a later job with the same name/storage_path resumes and continues to max_steps
    ckpt_every: int = 100  # steps between sharded checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # checkpoints kept besides the latest (best by val loss when validation runs)
    val_every: int = 100  # steps between validations (0 = never); also runs at each checkpoint
    val_max_batches: int | None = None  # cap on validation micro-batches per rank (None = the whole split)
    log_every: int = 1  # steps between metric logs
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 on GPU, fp32 on CPU
    activation_checkpointing: bool = False  # recompute each transformer layer in backward (memory for ~30% compute)
    nan_guard: bool = True  # skip (and count) steps whose loss or grad norm is NaN/inf
    max_consecutive_skips: int = 20  # abort when this many steps in a row are skipped (diverged run)
    max_failures: int = 0  # worker-group restarts from the latest checkpoint before the job fails
    seed: int = 0  # model init and in-model randomness (Gumbel noise); data seeds are in the data section
    collective_timeout_s: int = 1800  # NCCL/gloo timeout; a hang surfaces as an error instead of forever
    export: bool = True  # save_pretrained both towers (+ tokenizers) at the end and log them to MLflow

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"train.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.accum_steps < 1:
            raise ValueError(f"train.accum_steps must be >= 1, got {self.accum_steps}")
        if self.lr <= 0 or self.protein_lr_ratio < 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ValueError("train: need lr > 0, protein_lr_ratio >= 0, weight_decay >= 0, eps > 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must be in [0, 1), got {self.betas}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("train: warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip must be >= 0, got {self.grad_clip}")
        for name in ("max_steps", "stop_at_step", "val_max_batches"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"train.{name} must be >= 1 or null, got {v}")
        for name in ("ckpt_every", "val_every", "max_failures", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1 or self.max_consecutive_skips < 1 or self.collective_timeout_s < 1:
            raise ValueError("train: log_every, max_consecutive_skips and collective_timeout_s must be >= 1")
        if self.keep_checkpoints < 1:
            raise ValueError("train.keep_checkpoints must be >= 1 (the latest is needed to resume)")

    @property
    def device_type(self) -> str:
        return "cuda" if self.use_gpu else "cpu"

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.use_gpu)


@dataclass(kw_only=True)
class RunStorageConfig(StorageConfig):
    """Object-storage access (credentials: prefer the environment) plus where this run keeps its checkpoints."""

    storage_path: str = "./runs"  # Ray Train storage: local dir, file://, s3://bucket/prefix, gs://...
    name: str = "protclip-pretrain"  # run name; same name + storage_path = resume the same run

    def __post_init__(self) -> None:
        if not self.storage_path:
            raise ValueError("storage.storage_path must be a directory or URI")
        if not self.name or "/" in self.name:
            raise ValueError(f"storage.name must be a non-empty name without '/', got {self.name!r}")

    def access(self) -> StorageConfig:
        """Just the credentials/endpoint part (what readers of ProtAnno need)."""
        return StorageConfig(endpoint_url=self.endpoint_url, region=self.region, access_key_id=self.access_key_id,
                             secret_access_key=self.secret_access_key, session_token=self.session_token,
                             anonymous=self.anonymous)


@dataclass(kw_only=True)
class TrainRunConfig:
    """What one pre-training run needs: the root of the job's config, minus its eval schedule."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    storage: RunStorageConfig = field(default_factory=RunStorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.data.uri:
            raise ValueError("data.uri must point at a ProtAnno Parquet folder or file")

    @property
    def global_batch_size(self) -> int:
        """Pairs per optimizer step over all workers (the GC negatives: accumulation keeps them all)."""
        return self.data.micro_batch_size * self.train.accum_steps * self.train.num_workers
