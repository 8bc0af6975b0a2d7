"""Independent reference computations that the data-pipeline tests compare the library's numbers with."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import pyarrow as pa

from protclip.data.sampling import SamplingConfig, keep_mask

MixDict = dict[tuple[bool, int, int], int]
GROUP = ["reviewed", "protein_existence", "n_properties"]


def padding_share(n_real: int | float, n_padded: int | float) -> float:
    """Padded share of the protein token slots (0 when nothing was seen)."""
    total = n_real + n_padded
    return float(n_padded) / float(total) if total else 0.0


def block_mix(batch: pa.Table, *, sampling: SamplingConfig, epoch: int) -> pa.Table:
    """Partial counts of one block: rows kept at ``epoch`` per (reviewed, PE, k)."""
    m = keep_mask(batch["reviewed"].to_numpy(zero_copy_only=False), batch["protein_existence"].to_numpy(),
                  batch["n_properties"].to_numpy(), batch["accession"], sampling, epoch)
    kept = batch.select(GROUP).filter(pa.array(m, type=pa.bool_()))
    return kept.group_by(GROUP).aggregate([([], "count_all")]).rename_columns([*GROUP, "n"])


def sample_mix(ds_or_table: Any, sampling_cfg: SamplingConfig, epoch: int = 0) -> MixDict:
    """Rows the sampler keeps at ``epoch``, per (reviewed, PE, k), over all rows of a Dataset or Arrow table.

    A Ray Dataset is sampled and counted per block in ``map_batches`` on the workers; the driver adds the partial
    counts (a few rows per block). Ray's ``groupby().count()`` gives the same numbers but starts a hash shuffle,
    which took about 30 s for 103 rows on a busy 2-core machine. (The pipeline's own mix also excludes the
    validation rows; see :func:`protclip.data.mix.compute_mix`.)
    """
    if isinstance(ds_or_table, pa.Table):
        parts = [block_mix(ds_or_table, sampling=sampling_cfg, epoch=epoch)]
    else:
        import ray

        ds = ds_or_table.select_columns(["accession", *GROUP]).map_batches(
            partial(block_mix, sampling=sampling_cfg, epoch=epoch), batch_format="pyarrow", zero_copy_batch=True)
        parts = [p for p in ray.get(ds.to_arrow_refs()) if p.num_rows]
    if not parts:
        return {}
    d = pa.concat_tables(parts).group_by(GROUP).aggregate([("n", "sum")]).to_pydict()
    return dict(sorted(((bool(r), int(p), int(k)), int(n))
                       for r, p, k, n in zip(d["reviewed"], d["protein_existence"], d["n_properties"], d["n_sum"],
                                             strict=True)))


class EpochDataStats:
    """Per-epoch totals of what one worker consumed: micro-batches, rows, real and padded protein tokens."""

    def __init__(self) -> None:
        self.totals: dict[int, list[int]] = {}

    def update(self, micro_batch: Mapping[str, Any]) -> None:
        e = int(micro_batch["epoch"])
        t = self.totals.setdefault(e, [0, 0, 0, 0])
        t[0] += 1
        t[1] += int(micro_batch["protein_input_ids"].shape[0]) if "protein_input_ids" in micro_batch else 0
        t[2] += int(micro_batch["n_real_tokens"])
        t[3] += int(micro_batch["n_padded_tokens"])

    def metrics(self, epoch: int) -> dict[str, float]:
        mb, rows, real, padded = self.totals.get(epoch, [0, 0, 0, 0])
        total = real + padded
        return {
            f"data/epoch{epoch}/micro_batches": float(mb),
            f"data/epoch{epoch}/rows": float(rows),
            f"data/epoch{epoch}/padding_share": float(padded / total) if total else 0.0,
        }

