"""The ``data`` section of the pre-training config: where ProtAnno lives and how the Ray Data pipeline feeds it.

Kept free of Ray so configs load anywhere. The pipeline itself is :mod:`protclip.data.pipeline`.

Resources on small machines (2 cores): Ray Data needs at least one CPU left over by the training workers, else
its tasks never get scheduled and training hangs at the first batch. Either start
Ray with more logical CPUs than the workers take (``init_ray(num_cpus=4)`` for 2 workers at 1 CPU) or give the
workers fractional CPUs (``ScalingConfig(resources_per_worker={"CPU": 0.5})``). ``map_num_cpus`` below is what
each Ray Data task asks for; keep it <= the CPUs left to Ray Data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from protclip.data.sampling import SamplingConfig

#: ``max_protein_length`` when the config leaves it null, by batching mode (see the field's comment)
DEFAULT_MAX_PROTEIN_LENGTH = {"packed": 4096, "bucketed": 1024}


@dataclass(kw_only=True)
class DataConfig:
    """ProtAnno source, property-driven sampling, shuffling, batching, sequence lengths and the train/validation
    split.

    The three ``max_*_length`` fields are the run's only length limits: the collator
    (``protclip.model.config.collate_config``) and evaluation of the trained model read them from here.
    """

    uri: str = ""  # ProtAnno Parquet folder/prefix or single file: local path, file://, s3://, gs://
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # keep rule, mode once/per_epoch, hash seed
    micro_batch_size: int = 8  # bucketed: rows per micro-batch per worker (packed: see max_tokens)
    # tokens incl. <cls>/<eos>; longer sequences are cropped, never rejected. null = by batching: 4096 packed
    # (memory follows the token budget, so long proteins cost only their tokens), 1024 bucketed (memory follows
    # micro_batch_size x the longest row, ESM-2's pre-training crop)
    max_protein_length: int | None = None
    max_text_length: int = 512  # full text tokens incl. [CLS]/[SEP] (truncated)
    max_subtext_length: int = 128  # per property sub-text tokens (truncated)
    # rows sorted by protein length inside a window before chunking into micro-batches (length bucketing);
    # <= micro_batch_size switches bucketing off
    bucket_window: int = 256
    # "bucketed": micro_batch_size rows per micro-batch, length-bucketed and padded; "packed": rows taken in the
    # buffer's shuffled order until a micro-batch holds max_tokens protein / max_text_tokens text tokens, then
    # concatenated end to end without padding (one row per micro-batch, per-sequence boundaries; varying pairs)
    batching: Literal["bucketed", "packed"] = "bucketed"
    max_tokens: int = 16384  # packed: protein tokens (incl. <cls>/<eos>) per micro-batch; >= max_protein_length
    max_text_tokens: int = 16384  # packed: full-text tokens per micro-batch; >= max_text_length
    # (both budgets are read by packed batching only, so only packed batching checks them against the lengths)
    # rows shuffled together on a data worker before bucketing (bounded local shuffle buffer, seeded); the
    # block-level shuffle is a per-epoch seeded permutation of the Parquet row groups read
    shuffle_buffer: int = 512
    seed: int = 0  # seed of the row-group order, the shuffle buffer and the collator's masks (with epoch)
    val_fraction: float = 0.05  # share of the pool held out for validation, by a hash of the accession
    val_max_rows: int | None = 2048  # cap on sampled validation rows (the ones with the smallest hash); None = all
    val_seed: int = 0  # hash seed of the train/validation split, independent of `seed` so reruns keep the set
    # where train/validation/test come from: "build" = the ProtAnno build's held-out split (_holdout.parquet:
    # train rows only for training, val rows for validation, test rows never read); "hash" = the accession hash
    # above (val_fraction, val_seed); "auto" = "build" when the folder's manifest has a held-out split, else "hash"
    holdout: Literal["auto", "build", "hash"] = "auto"
    num_epochs: int = 1  # all epochs form one Ray Dataset (epoch e: sampling epoch e, or 0 in "once" mode)
    # "streaming": Ray Train's streaming_split (equal=True), scales, rows per rank not bit-reproducible;
    # "deterministic": fixed pipeline order, every rank reads the whole stream and keeps micro-batch i when
    # i % world_size == rank (costs world_size x the data work; for reproducibility checks and small runs)
    split: Literal["streaming", "deterministic"] = "streaming"
    read_parallelism: int | None = None  # read tasks per epoch (row groups grouped); None = one per row group
    map_num_cpus: float = 1.0  # CPUs requested by each Ray Data read/collate task
    map_concurrency: int | None = None  # max concurrent collate tasks; None = Ray Data decides
    # memory each collate task reserves (Ray scheduling; tokenizers + one buffer of arrays); being different from
    # the read tasks' request also keeps Ray from fusing the two stages (fused, a task would bundle
    # `shuffle_buffer` row groups instead of `shuffle_buffer` rows)
    collate_memory_mb: int = 512
    # shard check against the build manifest when a run starts (protclip.data.verify), in parallel Ray tasks:
    # "full" = size + SHA-256 of every shard; "sampled" = size of every shard + SHA-256 of `verify_sample` of them
    # (all of them when there are fewer); "size" = sizes only; "off" = none (folders without a manifest: none)
    verify: Literal["full", "sampled", "size", "off"] = "sampled"
    verify_sample: int = 16  # shards hashed in "sampled" mode (chosen by `seed`)

    def __post_init__(self) -> None:
        if isinstance(self.sampling, dict):  # tolerate plain dicts (e.g. DataConfig(**yaml_section))
            self.sampling = SamplingConfig(**self.sampling)
        for name in ("micro_batch_size", "num_epochs", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.batching not in ("bucketed", "packed"):
            raise ValueError(f"data.batching must be 'bucketed' or 'packed', got {self.batching!r}")
        if self.max_protein_length is None:
            self.max_protein_length = DEFAULT_MAX_PROTEIN_LENGTH[self.batching]
        if self.batching == "packed" and self.max_tokens < self.max_protein_length:
            raise ValueError(f"data.max_tokens ({self.max_tokens}) must be >= data.max_protein_length "
                             f"({self.max_protein_length}): the longest protein must fit one micro-batch")
        if self.batching == "packed" and self.max_text_tokens < self.max_text_length:
            raise ValueError(f"data.max_text_tokens ({self.max_text_tokens}) must be >= data.max_text_length "
                             f"({self.max_text_length}): the longest text must fit one micro-batch")
        if self.bucket_window < 0:
            raise ValueError(f"data.bucket_window must be >= 0, got {self.bucket_window}")
        if self.max_protein_length < 3:
            raise ValueError(f"data.max_protein_length must be >= 3 (cls, a residue, eos), got {self.max_protein_length}")
        for name in ("max_text_length", "max_subtext_length"):
            if getattr(self, name) < 3:
                raise ValueError(f"data.{name} must be >= 3, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_max_rows is not None and self.val_max_rows < 0:
            raise ValueError(f"data.val_max_rows must be >= 0 or null, got {self.val_max_rows}")
        if self.holdout not in ("auto", "build", "hash"):
            raise ValueError(f"data.holdout must be 'auto', 'build' or 'hash', got {self.holdout!r}")
        if self.split not in ("streaming", "deterministic"):
            raise ValueError(f"data.split must be 'streaming' or 'deterministic', got {self.split!r}")
        if self.read_parallelism is not None and self.read_parallelism < 1:
            raise ValueError(f"data.read_parallelism must be >= 1 or null, got {self.read_parallelism}")
        if self.map_num_cpus <= 0:
            raise ValueError(f"data.map_num_cpus must be > 0, got {self.map_num_cpus}")
        if self.collate_memory_mb < 1:
            raise ValueError(f"data.collate_memory_mb must be >= 1, got {self.collate_memory_mb}")
        if self.verify not in ("full", "sampled", "size", "off"):
            raise ValueError(f"data.verify must be 'full', 'sampled', 'size' or 'off', got {self.verify!r}")
        if self.verify_sample < 1:
            raise ValueError(f"data.verify_sample must be >= 1, got {self.verify_sample}")
        if self.map_concurrency is not None and self.map_concurrency < 1:
            raise ValueError(f"data.map_concurrency must be >= 1 or null, got {self.map_concurrency}")
        for name in ("seed", "val_seed"):
            if not 0 <= getattr(self, name) < 2**63:
                raise ValueError(f"data.{name} must be in [0, 2**63), got {getattr(self, name)}")

    @property
    def max_residues(self) -> int:
        """Residues kept per protein after cropping (the length budget minus <cls> and <eos>)."""
        assert self.max_protein_length is not None  # resolved in __post_init__
        return self.max_protein_length - 2

    @property
    def sampling_epochs(self) -> list[int]:
        """The sampling epoch of each training epoch (all 0 in "once"/"none" mode)."""
        return [e if self.sampling.mode == "per_epoch" else 0 for e in range(self.num_epochs)]

    @property
    def window_rows(self) -> int:
        """Rows handed to one collate call: the shuffle buffer, at least one bucket window, whole micro-batches."""
        rows = max(self.shuffle_buffer, self.bucket_window, self.micro_batch_size)
        return -(-rows // self.micro_batch_size) * self.micro_batch_size


def tiny_data_config(**overrides: Any) -> DataConfig:
    """Short length limits that go with ``protclip.model.config.tiny_model_config`` (tests, the CPU demo)."""
    values: dict[str, Any] = {"max_protein_length": 130, "max_text_length": 128, "max_subtext_length": 64}
    return DataConfig(**(values | overrides))
