"""Ray Data pipeline for pre-training: ProtAnno Parquet -> sampled -> shuffled -> bucketed -> collated micro-batches.

Shape of the pipeline (one Ray Dataset for all epochs, so the trainer iterates once)::

    row groups of every epoch, epoch-major, each epoch in a seeded order      (block-level shuffle, streaming)
      -> read task: read only the needed columns, validation hash + property-driven sampling  (stages.SplitRule)
      -> collate task: shuffle buffer, length bucketing, collator                (stages.collate_windows)
      -> one row per micro-batch (numpy arrays, variable shape between rows)

Why row groups and not ``read_parquet`` + ``randomize_block_order`` + ``union``: in Ray 2.60 ``union`` interleaves
its inputs block by block (round-robin with ``preserve_order``, arrival order without; checked), so a union of
per-epoch datasets mixes epochs, runs every epoch's read at once, and puts a row kept in two epochs next to
itself; and ``randomize_block_order`` is an all-to-all barrier, so the first batch would wait for the whole epoch
to be read and sampled. A seeded permutation of the row groups per epoch is the same block-level shuffle done
at the source, keeps streaming, and the footers were read anyway for validation.

Splitting over training workers (see :func:`ray_data_config`): ``streaming`` = Ray Train's
``streaming_split(equal=True)``; ``deterministic`` = every rank reads the whole (order-preserving) stream and
:func:`iter_micro_batches` keeps micro-batch ``i`` when ``i % world_size == rank``, within an epoch, dropping an
incomplete last group, so every rank gets the same count and no rank can starve the collectives. In streaming
mode read tasks finish out of order, so micro-batches of two consecutive epochs can interleave near the boundary;
every micro-batch carries its ``epoch``. Deterministic mode is epoch-major (order preserved).

Resources (2-core machines): start Ray with spare logical CPUs (``init_ray(num_cpus=4)`` for 2 workers at 1 CPU)
or give workers fractional CPUs; every task here asks for ``data.map_num_cpus``. Without CPUs left
over by the training workers these tasks are never scheduled and training hangs at the first batch
(docs/data_pipeline.md, "Resources on small machines").
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from protclip.data.batching import packed_micro_batches
from protclip.data.collate import CollateConfig, ProtCLIPCollator
from protclip.data.config import DataConfig
from protclip.data.holdout import check_heldout_rows, resolve_training_split
from protclip.data.mix import compute_mix, mix_metrics
from protclip.data.parquet_files import ParquetInventory, inspect_parquet
from protclip.data.sampling import SamplingConfig
from protclip.data.schema import SCHEMA_VERSION
from protclip.data.stages import (
    DETERMINISTIC_FLAG,
    BuildSplit,
    SplitRule,
    collate_windows,
    derive_seed,
    protein_tokens,
    read_and_sample,
)
from protclip.data.verify import verify_shards
from protclip.storage import StorageConfig, redact

__all__ = [
    "PretrainData", "build_pretrain_datasets", "iter_micro_batches", "ray_data_config",
    "mix_metrics", "make_collator", "sampled_rows",
]  # fmt: skip

_log = logging.getLogger(__name__)

#: columns every collated micro-batch needs besides what the collator asks for
_BASE_COLUMNS = ["accession", "sequence", "length", "text", "property_offsets"]


@dataclass
class PretrainData:
    """What :func:`build_pretrain_datasets` returns.

    ``steps_per_epoch`` counts micro-batches per rank per epoch (an estimate from the exact sampled row counts:
    each shuffle buffer drops its last ``n % micro_batch_size`` rows; packed batching: from the sampled rows'
    protein token counts, see :func:`protclip.data.batching.packed_micro_batches`);
    ``mix[epoch][(reviewed, pe, k)]`` is the exact number of training rows the sampler keeps in that epoch.
    """

    train: Any  # ray.data.Dataset
    val: Any | None  # ray.data.Dataset; None when fewer validation rows than one micro-batch per worker
    steps_per_epoch: int
    mix: dict[int, dict[tuple[bool, int, int], int]]
    manifest: dict[str, Any]
    val_mix: dict[tuple[bool, int, int], int] = field(default_factory=dict)
    val_rows: int = 0
    micro_batches_per_epoch: dict[int, int] = field(default_factory=dict)  # estimate, all ranks together

    def mix_metrics(self) -> dict[str, int]:
        """``{"mix/epoch0/sp_pe1_k4": n, ..., "mix/epoch0/total": n}`` for MLflow."""
        return mix_metrics(self.mix)


# ---------------------------------------------------------------------------------------------- collator


_LENGTHS = ("max_protein_length", "max_text_length", "max_subtext_length")


def make_collator(data_cfg: DataConfig, collate_cfg_or_collator: Any, *, train: bool = True) -> Any:
    """The collator the collate tasks call, seeded by the data section.

    Accepts a ``ProtCLIPCollator`` (copied), a ``CollateConfig``, or any callable
    ``collator(rows, seed=...) -> dict of arrays`` (used as is). A ProtCLIP collation config must carry the data
    section's length limits (build it with ``collate_config(..., data_cfg=data_cfg)``): a mismatch is an error,
    since the data section is the one place the lengths are set.
    """
    obj = collate_cfg_or_collator
    if isinstance(obj, CollateConfig):
        obj = ProtCLIPCollator(obj)
    elif isinstance(obj, ProtCLIPCollator):
        obj = copy.copy(obj)
    elif not callable(obj):
        raise TypeError(f"collate_cfg_or_collator: expected a ProtCLIPCollator, CollateConfig or a callable, "
                        f"got {type(obj).__name__}")
    if isinstance(obj, ProtCLIPCollator):
        differ = [f"{k} {getattr(obj.cfg, k)} != data.{k} {getattr(data_cfg, k)}" for k in _LENGTHS
                  if getattr(obj.cfg, k) != getattr(data_cfg, k)]
        if differ:
            raise ValueError(f"collator lengths differ from the data section ({'; '.join(differ)}); build the "
                             "collation config with collate_config(..., data_cfg=<the data section>)")
        obj.as_numpy = True
        obj.train = train
        obj.seed = data_cfg.seed
    return obj


def required_columns(collator: Any) -> list[str]:
    """Columns to read for the collator: its ``required_columns`` if it declares them, else the ProtCLIP set."""
    cols = list(getattr(collator, "required_columns", None) or _BASE_COLUMNS)
    loss_cfg = getattr(collator, "loss_cfg", None)
    if loss_cfg is not None and getattr(loss_cfg, "span_source", "random") == "features":
        cols.append("features")
    for c in ("accession", "length"):
        if c not in cols:
            cols.append(c)
    return list(dict.fromkeys(cols))


# ---------------------------------------------------------------------------------------------- datasets


def _items(inv: ParquetInventory, epochs: list[int], seed: int, read_parallelism: int | None,
           sampling: SamplingConfig, shuffle: bool = True) -> tuple[list[dict[str, Any]], int]:
    """(epoch, path, row_group, num_rows) per row group, epoch-major, each epoch in a seeded random order.

    Returns the items and the number of read tasks (blocks) they are cut into, so each task reads consecutive
    items of one epoch.
    """
    items: list[dict[str, Any]] = []
    n_tasks = 0
    frags = [f for f in inv.fragments if f.may_keep(sampling)]  # footer stats prove nothing else can be kept
    per_task = 1 if not read_parallelism else max(1, math.ceil(len(frags) / read_parallelism))
    for e in epochs:
        order = np.random.default_rng(derive_seed(seed, e, "row-groups")).permutation(len(frags)) if shuffle \
            else np.arange(len(frags))
        items.extend({"epoch": e, "path": frags[i].path, "row_group": frags[i].row_group,
                      "num_rows": frags[i].num_rows} for i in order)
        n_tasks += math.ceil(len(frags) / per_task)
    return items, n_tasks


def sampled_rows(
    data_cfg: DataConfig,
    storage_cfg: StorageConfig | None = None,
    *,
    split: str = "train",
    epochs: list[int] | None = None,
    columns: list[str] | None = None,
    inventory: ParquetInventory | None = None,
    val_threshold: float = 1.0,
    shuffle: bool = True,
    build_split: BuildSplit | None | Literal["resolve"] = "resolve",
) -> Any:
    """The rows the pipeline feeds to collation (after the split and the sampler), before collation.

    One row per sampled ProtAnno row, with ``columns`` (default: the metadata and ``length``) and ``epoch``.
    ``build_split``: the build's held-out accessions, None for the accession hash, or "resolve" to decide from
    ``data.holdout`` and the folder's manifest (test rows of a build split are never yielded).
    """
    import ray.data

    inv = inventory or inspect_parquet(data_cfg.uri, storage_cfg)
    if isinstance(build_split, str):
        build_split = resolve_training_split(data_cfg, inv.files, storage_cfg)[0]
    epochs = list(range(data_cfg.num_epochs)) if epochs is None else list(epochs)
    out_columns = list(columns or ["accession", "reviewed", "protein_existence", "n_properties", "length"])
    read_columns = list(dict.fromkeys(["accession", "reviewed", "protein_existence", "n_properties"] + out_columns))
    items, n_tasks = _items(inv, epochs, data_cfg.seed, data_cfg.read_parallelism, data_cfg.sampling, shuffle)
    if not items:
        raise ValueError(f"{redact(data_cfg.uri)}: no rows to read")
    rule = SplitRule(split, data_cfg.val_fraction, data_cfg.val_seed, val_threshold,  # type: ignore[arg-type]
                     build=build_split)
    fn = partial(read_and_sample, fs=inv.fs, uri=inv.uri, read_columns=read_columns, out_columns=out_columns,
                 sampling=data_cfg.sampling, rule=rule)
    ds = ray.data.from_items(items, override_num_blocks=n_tasks)
    return ds.map_batches(fn, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                          num_cpus=data_cfg.map_num_cpus)


def _collated(rows: Any, data_cfg: DataConfig, collator: Any, deterministic: bool) -> Any:
    fn = partial(collate_windows, collator=collator, micro_batch_size=data_cfg.micro_batch_size,
                 bucket_window=data_cfg.bucket_window, max_protein_length=data_cfg.max_protein_length,
                 seed=data_cfg.seed, deterministic=deterministic, batching=data_cfg.batching,
                 max_tokens=data_cfg.max_tokens, max_text_tokens=data_cfg.max_text_tokens)
    # the memory request differs from the read stage's remote args, which keeps Ray from fusing the two stages:
    # fused, each task would bundle `window_rows` row groups instead of `window_rows` sampled rows
    return rows.map_batches(fn, batch_format="pyarrow", batch_size=data_cfg.window_rows, zero_copy_batch=True,
                            num_cpus=data_cfg.map_num_cpus, concurrency=data_cfg.map_concurrency,
                            memory=data_cfg.collate_memory_mb * 2**20)


def _estimate_micro_batches(n_rows: int, data_cfg: DataConfig) -> int:
    """Micro-batches from ``n_rows`` sampled rows: about half a micro-batch of rows is dropped per buffer."""
    mbs = data_cfg.micro_batch_size
    buffers = math.ceil(n_rows / data_cfg.window_rows) if n_rows else 0
    return max(0, int((n_rows - buffers * (mbs - 1) / 2) // mbs))


def _token_histogram(batch: pa.Table, max_protein_length: int) -> pa.Table:
    """(epoch, tokens, n) for a block of sampled rows: the packed step estimate needs how many rows of each
    protein token count an epoch holds, so only these few counts per read task reach the driver, not the rows."""
    if batch.num_rows == 0:
        return pa.table({"epoch": pa.array([], pa.int64()), "tokens": pa.array([], pa.int64()),
                         "n": pa.array([], pa.int64())})
    tokens = protein_tokens(batch.column("length").to_numpy(), max_protein_length)
    pairs, n = np.unique(np.stack([batch.column("epoch").to_numpy().astype(np.int64), tokens]), axis=1,
                         return_counts=True)
    return pa.table({"epoch": pairs[0], "tokens": pairs[1], "n": n.astype(np.int64)})


def _packed_token_counts(data_cfg: DataConfig, storage_cfg: StorageConfig | None, inv: ParquetInventory,
                         epochs: list[int], build_split: BuildSplit | None) -> dict[int, np.ndarray]:
    """Protein tokens (after the crop) of every sampled training row, per epoch, in no particular order.

    One more Ray pass over the metadata and ``length`` columns, run only for packed batching: the mix pass counts
    rows, and a token budget needs their lengths.
    """
    import ray

    rows = sampled_rows(data_cfg, storage_cfg, split="train", epochs=epochs, columns=["length"], inventory=inv,
                        build_split=build_split)
    hist = rows.map_batches(partial(_token_histogram, max_protein_length=data_cfg.max_protein_length),
                            batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                            num_cpus=data_cfg.map_num_cpus)
    parts = [t for t in ray.get(hist.to_arrow_refs()) if t.num_rows]
    out = {e: np.zeros(0, dtype=np.int64) for e in epochs}
    if parts:
        d = pa.concat_tables(parts).group_by(["epoch", "tokens"]).aggregate([("n", "sum")]).to_pydict()
        by_epoch: dict[int, list[tuple[int, int]]] = {}
        for e, t, n in zip(d["epoch"], d["tokens"], d["n_sum"], strict=True):
            by_epoch.setdefault(int(e), []).append((int(t), int(n)))
        for e, cells in by_epoch.items():
            out[e] = np.repeat([t for t, _ in cells], [n for _, n in cells]).astype(np.int64)
    return out


def build_pretrain_datasets(
    data_cfg: DataConfig,
    collate_cfg_or_collator: Any,
    storage_cfg: StorageConfig | None = None,
    *,
    world_size: int,
    start_epoch: int = 0,
) -> PretrainData:
    """Validate the ProtAnno files, count the sample mix, and build the (lazy) train and validation datasets.

    Runs one Ray pass over the metadata columns now (exact mix, validation cap, step estimate); the returned
    datasets are lazy and execute when the trainer iterates them. ``start_epoch`` drops whole epochs before it
    (cheap resume; the position inside an epoch is ``iter_micro_batches(skip=...)``).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= start_epoch < data_cfg.num_epochs:
        raise ValueError(f"start_epoch must be in [0, {data_cfg.num_epochs}), got {start_epoch}")
    collator = make_collator(data_cfg, collate_cfg_or_collator, train=True)
    val_collator = make_collator(data_cfg, collate_cfg_or_collator, train=False)
    columns = required_columns(collator)
    inv = inspect_parquet(data_cfg.uri, storage_cfg)
    verified = verify_shards(data_cfg.uri, storage_cfg, mode=data_cfg.verify, sample=data_cfg.verify_sample,
                             seed=data_cfg.seed)
    deterministic = data_cfg.split == "deterministic"

    build_split, holdout_info = resolve_training_split(data_cfg, inv.files, storage_cfg)
    counts = compute_mix(inv, data_cfg, build_split)
    if build_split is not None:
        complete = all(f.may_keep(data_cfg.sampling) for f in inv.fragments)
        check_heldout_rows(data_cfg.uri, counts.heldout_rows, holdout_info, complete)
    epochs = list(range(start_epoch, data_cfg.num_epochs))
    mix = {e: counts.train[e] for e in epochs}
    train_rows = {e: sum(mix[e].values()) for e in epochs}
    packed = data_cfg.batching == "packed"
    if packed:
        tokens = _packed_token_counts(data_cfg, storage_cfg, inv, epochs, build_split)
        mbs_est = {e: packed_micro_batches(tokens[e], data_cfg.max_tokens, data_cfg.window_rows,
                                           derive_seed(data_cfg.seed, e, "estimate")) for e in epochs}
    else:
        mbs_est = {e: _estimate_micro_batches(n, data_cfg) for e, n in train_rows.items()}
    steps = min(mb // world_size for mb in mbs_est.values())
    if steps == 0:
        per_mb = f"max_tokens {data_cfg.max_tokens}" if packed else f"micro_batch_size {data_cfg.micro_batch_size}"
        raise ValueError(
            f"{redact(data_cfg.uri)}: an epoch yields about {min(train_rows.values())} sampled training rows, too "
            f"few for {world_size} worker(s) x {per_mb}"
        )

    train = _collated(sampled_rows(data_cfg, storage_cfg, split="train", epochs=epochs, columns=columns,
                                   inventory=inv, build_split=build_split), data_cfg, collator, deterministic)
    val = None
    if counts.val_rows >= data_cfg.micro_batch_size * world_size:
        val_rows_ds = sampled_rows(data_cfg, storage_cfg, split="val", epochs=[0], columns=columns, inventory=inv,
                                   val_threshold=counts.val_threshold, build_split=build_split)
        val = _collated(val_rows_ds, data_cfg, val_collator, deterministic)
    for ds in (train, val):
        if ds is not None and deterministic:
            ds.context.execution_options.preserve_order = True
    manifest = {
        "uri": redact(data_cfg.uri),
        "schema_version": SCHEMA_VERSION,
        "files": [{**f, "path": inv.display(f["path"])} for f in inv.files],
        "n_files": len(inv.files),
        "n_row_groups": len(inv.fragments),
        "verify": verified.as_dict(),
        "row_groups_skipped_by_footer_stats": sum(not f.may_keep(data_cfg.sampling) for f in inv.fragments),
        "pool_rows": inv.num_rows,
        "columns_read": columns,
        "epochs": epochs,
        "train_rows_per_epoch": train_rows,
        "micro_batches_per_epoch_estimate": mbs_est,
        # packed: a micro-batch holds at least one row; bucketed: exactly micro_batch_size rows
        "micro_batches_per_epoch_max": {e: n if packed else n // data_cfg.micro_batch_size
                                        for e, n in train_rows.items()},
        "val_rows": counts.val_rows,
        "val_threshold": counts.val_threshold,
        "holdout": holdout_info,  # where train/validation came from: the build's held-out split or the hash
        "world_size": world_size,
        "split": data_cfg.split,
        "window_rows": data_cfg.window_rows,
        "batching": data_cfg.batching,
    }
    if packed:
        manifest["protein_tokens_per_epoch"] = {e: int(tokens[e].sum()) for e in epochs}
    _log.info("ProtAnno %s: %d files, %d rows; %s training rows per epoch; %d validation rows",
              manifest["uri"], len(inv.files), inv.num_rows, train_rows, counts.val_rows)
    return PretrainData(train=train, val=val, steps_per_epoch=steps, mix=mix, manifest=manifest,
                        val_mix=counts.val_mix, val_rows=counts.val_rows, micro_batches_per_epoch=mbs_est)


# ---------------------------------------------------------------------------------------------- training side


def ray_data_config(data_cfg: DataConfig) -> Any:
    """The ``ray.train.DataConfig`` matching ``data_cfg.split`` (pass it as ``TorchTrainer(dataset_config=...)``)."""
    from ray.train import DataConfig as TrainDataConfig

    if data_cfg.split == "deterministic":
        opts = TrainDataConfig.default_ingest_options()
        opts.preserve_order = True
        return TrainDataConfig(datasets_to_split=[], execution_options=opts)
    return TrainDataConfig()  # streaming_split(world_size, equal=True) on every dataset


def _train_rank_world() -> tuple[int, int]:
    """(rank, world size) inside a Ray Train worker; (0, 1) anywhere else (driver, tests, tools)."""
    import ray.train

    try:
        ctx = ray.train.get_context()
    except RuntimeError:  # not inside trainer.fit()
        return 0, 1
    return ctx.get_world_rank(), ctx.get_world_size()


def _squeeze(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A 1-row numpy batch -> the micro-batch's arrays (variable-shaped columns come as object arrays)."""
    return {k: v[0] for k, v in batch.items()}


#: micro-batch fields only the loop's bookkeeping reads (epoch, padding counts, keys): they stay on the host
HOST_FIELDS = frozenset({"epoch", "n_real_tokens", "n_padded_tokens", "batch_key", "property_present"})


def iter_micro_batches(
    shard: Any,
    *,
    skip: int = 0,
    device: Any = None,
    rank: int | None = None,
    world_size: int | None = None,
    prefetch_batches: int = 2,
) -> Iterator[dict[str, Any]]:
    """Yield this worker's micro-batches as ``dict[str, torch.Tensor]`` (integer arrays as int64).

    ``shard`` is ``ray.train.get_dataset_shard(name)`` (or any Dataset / DataIterator). ``skip`` drops the first
    ``skip`` micro-batches this rank would get (resume). For a deterministic-split pipeline, ``rank`` and
    ``world_size`` default to the Ray Train context; micro-batch ``i`` of each epoch goes to rank
    ``i % world_size`` and an incomplete last group of an epoch is dropped on every rank. Model inputs move to
    ``device``; :data:`HOST_FIELDS` stay on the host (only the loop's bookkeeping reads them).
    """
    import torch

    from protclip.data.executor_idle import throttle_idle_scheduling

    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    throttle_idle_scheduling()  # the executor runs in this (training) process in deterministic mode
    it = shard.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=prefetch_batches)

    def rows() -> Iterator[dict[str, np.ndarray]]:
        nonlocal rank, world_size
        group: list[dict[str, np.ndarray]] = []
        det: bool | None = None
        for batch in it:
            row = _squeeze(batch)
            if det is None:
                det = bool(int(row.get(DETERMINISTIC_FLAG, 0)))
                if det and (rank is None or world_size is None):
                    r, w = _train_rank_world()
                    rank = r if rank is None else rank
                    world_size = w if world_size is None else world_size
                if det and not 0 <= (rank or 0) < (world_size or 1):
                    raise ValueError(f"rank {rank} outside world_size {world_size}")
            if not det or (world_size or 1) == 1:
                yield row
                continue
            if group and int(group[0]["epoch"]) != int(row["epoch"]):
                group = []  # incomplete group at the end of an epoch: dropped on every rank
            group.append(row)
            if len(group) == world_size:
                yield group[rank or 0]
                group = []

    n = 0
    for row in rows():
        n += 1
        if n <= skip:
            continue
        out = {}
        for k, v in row.items():
            if k.startswith("_"):
                continue
            a = np.asarray(v)
            if a.dtype.kind in "iu":
                a = a.astype(np.int64, copy=False)
            t = torch.from_numpy(np.ascontiguousarray(a) if a.ndim else a)  # scalars (epoch, counts) stay 0-d
            out[k] = t.to(device, non_blocking=True) if device is not None and k not in HOST_FIELDS else t
        yield out
