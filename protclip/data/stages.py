"""The per-block work of the ProtAnno pipeline: read + sample, and shuffle + bucket + collate.

Pure (pyarrow, numpy and the collator; no Ray import) so every decision is unit-testable; Ray Data calls these
functions from :mod:`protclip.data.pipeline` on its CPU workers. Every random choice is seeded from content
(seed, epoch, accessions), never from worker state or arrival order, so the same rows give the same output on
any worker and after a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from protclip.data.batching import token_budget_batches
from protclip.data.collate import pack_batch
from protclip.data.parquet_files import Fragment, needed_types, read_fragment
from protclip.data.sampling import SamplingConfig, keep_mask, row_uniform
from protclip.seeds import derive_seed

#: columns the sampler and the mix need
META_COLUMNS = ["accession", "reviewed", "protein_existence", "n_properties"]
#: marks rows of a deterministic-split pipeline (iter_micro_batches then keeps index % world_size == rank)
DETERMINISTIC_FLAG = "_deterministic_split"
#: salt of the train/validation hash, so the held-out set is uncorrelated with the sampler's draw
VAL_SALT = 0x76616C5F73706C74
_M64 = (1 << 64) - 1


def val_uniform(accessions: Any, val_seed: int) -> np.ndarray:
    """Hash of the accession in [0, 1) deciding the validation split (row order plays no part)."""
    return row_uniform(accessions, (VAL_SALT ^ val_seed) & _M64, 0)


@dataclass(frozen=True, eq=False)
class BuildSplit:
    """The ProtAnno build's held-out accessions, shipped to the read tasks (train = every other accession).

    Only val and test travel (a small share of the rows), as Arrow arrays: compact to pickle, fast in ``is_in``.
    """

    val: pa.Array
    test: pa.Array

    def masks(self, accessions: Any) -> tuple[np.ndarray, np.ndarray]:
        """(is validation, is test) per row."""
        def member(values: pa.Array) -> np.ndarray:
            return pc.is_in(accessions, value_set=values).to_numpy(zero_copy_only=False).astype(bool)

        return member(self.val), member(self.test)


@dataclass(frozen=True)
class SplitRule:
    """Which rows a read task keeps.

    train: not held out, and kept by the sampler at the row's sampling epoch.
    val:   held out, kept by the sampler at epoch 0, and hash <= val_threshold (the cap).
    Held out means hash < val_fraction, or, with ``build`` (the build's split), in its val or test set; only its
    val rows are validation rows and its test rows are never kept.
    """

    split: Literal["train", "val"]
    val_fraction: float
    val_seed: int = 0
    val_threshold: float = 1.0
    build: BuildSplit | None = None

    def held_out(self, accessions: Any, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(held out of training, validation candidate) per row."""
        if self.build is None:
            held = u < self.val_fraction
            return held, held
        is_val, is_test = self.build.masks(accessions)
        return is_val | is_test, is_val

    def mask(self, table: pa.Table, sampling: SamplingConfig, epoch: int) -> np.ndarray:
        acc = table.column("accession")
        u = val_uniform(acc, self.val_seed)
        held_out, is_val = self.held_out(acc, u)
        keep = keep_mask(
            table.column("reviewed").to_numpy(zero_copy_only=False),
            table.column("protein_existence").to_numpy(),
            table.column("n_properties").to_numpy(),
            acc,
            sampling,
            0 if self.split == "val" else epoch,
        )
        if self.split == "val":
            return keep & is_val & (u <= self.val_threshold)
        return keep & ~held_out


# ---------------------------------------------------------------------------------------------- read stage


def read_and_sample(
    items: pa.Table,
    *,
    fs: Any,
    uri: str,
    read_columns: list[str],
    out_columns: list[str],
    sampling: SamplingConfig,
    rule: SplitRule,
) -> pa.Table:
    """Read the row groups listed in ``items`` (epoch, path, row_group, num_rows) and keep the sampled rows.

    Output: ``out_columns`` plus ``epoch``, row-group order kept (the shuffle happens in the collate stage).
    """
    out = []
    cols = items.to_pydict()
    for epoch, path, rg, n in zip(cols["epoch"], cols["path"], cols["row_group"], cols["num_rows"], strict=True):
        table = read_fragment(fs, Fragment(path, rg, n), read_columns, uri)
        table = table.filter(pa.array(rule.mask(table, sampling, int(epoch)), type=pa.bool_()))
        table = table.select(out_columns)
        out.append(table.append_column("epoch", pa.array(np.full(table.num_rows, epoch, dtype=np.int64))))
    if not out:
        empty = needed_types(out_columns).empty_table()
        return empty.append_column("epoch", pa.array([], type=pa.int64()))
    return pa.concat_tables(out)


def metadata_counts(
    items: pa.Table,
    *,
    fs: Any,
    uri: str,
    sampling: SamplingConfig,
    sampling_epochs: Sequence[int],
    val_fraction: float,
    val_seed: int,
    build: BuildSplit | None = None,
) -> pa.Table:
    """One read of the metadata columns -> partial counts for the sample mix of every epoch, plus val candidates.

    Rows with kind 0: (epoch, reviewed, protein_existence, n_properties, n) training counts per sampling epoch.
    Rows with kind 1: one per validation candidate (held out and kept at epoch 0) with its hash ``u``.
    With the build's split, rows with kind 2 / 3: ``n`` = rows of the row group in its val / test set (before
    sampling), so the driver can check that the split covers the shards.
    """
    rule = SplitRule("train", val_fraction, val_seed, build=build)
    cols = items.to_pydict()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("kind", "epoch", "reviewed", "protein_existence",
                                                           "n_properties", "n", "u")}

    def emit(kind: int, epoch: int, rev: np.ndarray, pe: np.ndarray, k: np.ndarray, n: np.ndarray,
             u: np.ndarray) -> None:
        parts["kind"].append(np.full(len(n), kind, dtype=np.int64))
        parts["epoch"].append(np.full(len(n), epoch, dtype=np.int64))
        for name, v in (("reviewed", rev), ("protein_existence", pe), ("n_properties", k), ("n", n), ("u", u)):
            parts[name].append(v)

    for path, rg, nrows in zip(cols["path"], cols["row_group"], cols["num_rows"], strict=True):
        t = read_fragment(fs, Fragment(path, rg, nrows), META_COLUMNS, uri)
        acc = t.column("accession")
        rev = t.column("reviewed").to_numpy(zero_copy_only=False).astype(bool)
        pe = t.column("protein_existence").to_numpy().astype(np.int64)
        k = t.column("n_properties").to_numpy().astype(np.int64)
        u = val_uniform(acc, val_seed)
        held_out, is_val = rule.held_out(acc, u)
        code = rev.astype(np.int64) * 100 + pe * 10 + k
        for e in sorted(set(sampling_epochs)):
            keep = keep_mask(rev, pe, k, acc, sampling, e)
            codes, counts = np.unique(code[keep & ~held_out], return_counts=True)
            emit(0, e, codes // 100 == 1, (codes // 10) % 10, codes % 10, counts.astype(np.int64),
                 np.zeros(len(codes)))
        cand = is_val & keep_mask(rev, pe, k, acc, sampling, 0)
        emit(1, 0, rev[cand], pe[cand], k[cand], np.ones(int(cand.sum()), dtype=np.int64), u[cand])
        if build is not None:
            one = (np.zeros(1, dtype=bool), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
            emit(2, 0, *one, np.array([int(is_val.sum())]), np.zeros(1))
            emit(3, 0, *one, np.array([int((held_out & ~is_val).sum())]), np.zeros(1))
    arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    arrays["reviewed"] = arrays["reviewed"].astype(bool)
    for name in ("kind", "epoch", "protein_existence", "n_properties", "n"):
        arrays[name] = arrays[name].astype(np.int64)
    arrays["u"] = arrays["u"].astype(np.float64)
    return pa.table(arrays)


# ---------------------------------------------------------------------------------------------- collate stage


def protein_tokens(lengths: np.ndarray, max_protein_length: int) -> np.ndarray:
    """Tokens a sequence takes after cropping: residues (capped) plus <cls> and <eos>."""
    return np.minimum(np.asarray(lengths, dtype=np.int64), max_protein_length - 2) + 2


def bucket(order: np.ndarray, lengths: np.ndarray, micro_batch_size: int, bucket_window: int) -> list[np.ndarray]:
    """Chunk ``order`` (row indices, len a multiple of micro_batch_size) into micro-batches.

    Inside each window of ``bucket_window`` rows (rounded down to whole micro-batches) rows are sorted by length
    first, so rows of similar length share a micro-batch and padding stays low; a window <= micro_batch_size
    leaves the (shuffled) order as it is.
    """
    mbs = micro_batch_size
    if len(order) % mbs:
        raise ValueError(f"bucket: {len(order)} rows is not a multiple of micro_batch_size {mbs}")
    if bucket_window <= mbs:
        return [order[i : i + mbs] for i in range(0, len(order), mbs)]
    w = bucket_window // mbs * mbs
    groups = []
    for s in range(0, len(order), w):
        win = order[s : s + w]
        win = win[np.argsort(lengths[win], kind="stable")]
        groups.extend(win[i : i + mbs] for i in range(0, len(win), mbs))
    return groups


def _object_column(values: list[np.ndarray]) -> np.ndarray:
    col = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        col[i] = v
    return col


def _transport(v: Any) -> np.ndarray:
    """Numpy, int64 narrowed to int32 (token ids, masks and labels fit) to halve object-store traffic."""
    a = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
    if a.dtype == np.int64 and a.size and (a.min() < -(2**31) or a.max() >= 2**31):
        return a
    return a.astype(np.int32) if a.dtype == np.int64 else a


def collate_windows(
    batch: pa.Table,
    *,
    collator: Callable[..., Mapping[str, Any]],
    micro_batch_size: int,
    bucket_window: int,
    max_protein_length: int,
    seed: int,
    deterministic: bool,
    batching: str = "bucketed",
    max_tokens: int | None = None,
    max_text_tokens: int | None = None,
) -> dict[str, np.ndarray]:
    """One shuffle buffer of sampled rows -> collated micro-batches, one output row each.

    ``batching="packed"``: every row of the permutation is kept and cut, in order, into micro-batches of at most
    ``max_tokens`` protein / ``max_text_tokens`` text tokens (:func:`protclip.data.batching.token_budget_batches`),
    each collated then packed end to end (:func:`protclip.data.collate.pack_batch`); the buffer's last
    micro-batch may be under-filled. The rest of this docstring describes the bucketed mode.

    Per epoch present in the batch (a buffer can straddle an epoch boundary): permute the rows (seeded from
    seed, epoch and the buffer's accessions), drop the ``n % micro_batch_size`` rows at the end of the
    permutation (random rows, so no length bias), bucket by length, shuffle the micro-batch order, and collate
    each micro-batch with a seed from (seed, epoch, its accessions). Output columns: the collator's arrays
    (int32 for transport), ``epoch``, ``n_real_tokens`` / ``n_padded_tokens`` (protein tokens), ``batch_key``
    (the micro-batch's collate seed, an identity) and the deterministic-split flag.
    """
    mbs = micro_batch_size
    packed = batching == "packed"
    if packed and (max_tokens is None or max_text_tokens is None):
        raise ValueError("collate_windows: batching='packed' needs max_tokens and max_text_tokens")
    if batching not in ("bucketed", "packed"):
        raise ValueError(f"collate_windows: batching must be 'bucketed' or 'packed', got {batching!r}")
    epochs = batch.column("epoch").to_numpy()
    produced: list[tuple[int, int, Mapping[str, Any]]] = []
    distinct = list(dict.fromkeys(epochs.tolist()))  # epochs in order of first appearance
    for e in distinct:
        sub = batch if len(distinct) == 1 else batch.filter(pa.array(epochs == e))
        acc = sub.column("accession").to_pylist()
        m = len(acc) // mbs
        if m == 0 and not packed:
            continue
        rng = np.random.default_rng(derive_seed(seed, e, "buffer", *acc))
        lengths = protein_tokens(sub.column("length").to_numpy(), max_protein_length)
        rows = sub.drop_columns(["epoch"]).to_pylist()
        if packed:
            order = rng.permutation(len(acc))
            text_lengths = collator.text_token_counts([str(r["text"]) for r in rows])
            groups = token_budget_batches(order, lengths, text_lengths, max_tokens, max_text_tokens)
        else:
            order = rng.permutation(len(acc))[: m * mbs]
            groups = bucket(order, lengths, mbs, bucket_window)
        for gi in rng.permutation(len(groups)):
            idx = groups[gi]
            key = derive_seed(seed, e, "collate", *(acc[i] for i in idx))
            arrays = collator([rows[i] for i in idx], seed=key)
            produced.append((int(e), key, pack_batch(arrays) if packed else arrays))
    if not produced:
        return {}
    keys = list(produced[0][2])
    out: dict[str, np.ndarray] = {k: _object_column([_transport(p[2][k]) for p in produced]) for k in keys}
    real, padded = [], []
    for _, _, arrays in produced:
        mask = np.asarray(arrays["protein_attention_mask"])  # all ones when packed
        real.append(int(mask.sum()))
        padded.append(int(mask.size - mask.sum()))
    out["epoch"] = np.array([p[0] for p in produced], dtype=np.int64)
    out["n_real_tokens"] = np.array(real, dtype=np.int64)
    out["n_padded_tokens"] = np.array(padded, dtype=np.int64)
    out["batch_key"] = np.array([p[1] for p in produced], dtype=np.int64)
    out[DETERMINISTIC_FLAG] = np.full(len(produced), int(deterministic), dtype=np.int8)
    return out


def count_mix(table: pa.Table, mask: np.ndarray | None = None) -> dict[tuple[bool, int, int], int]:
    """(reviewed, PE, k) -> rows, for a table (optionally filtered by ``mask``); pure pyarrow."""
    if mask is not None:
        table = table.filter(pa.array(mask, type=pa.bool_()))
    if table.num_rows == 0:
        return {}
    g = table.group_by(["reviewed", "protein_existence", "n_properties"]).aggregate([([], "count_all")])
    d = g.to_pydict()
    return {
        (bool(r), int(p), int(k)): int(n)
        for r, p, k, n in zip(d["reviewed"], d["protein_existence"], d["n_properties"], d["count_all"], strict=True)
    }


def mix_key(reviewed: bool, pe: int, k: int) -> str:
    """``sp_pe1_k4`` (Swiss-Prot) / ``tr_pe3_k3`` (TrEMBL): the flat MLflow name of a mix cell."""
    return f"{'sp' if reviewed else 'tr'}_pe{int(pe)}_k{int(k)}"
