"""The realised sample mix: rows kept per (reviewed, PE, k) and epoch, counted with Ray on the metadata columns.

The pipeline needs the counts before training (step estimate, validation cap, MLflow logging), so it reads only
the four metadata columns once: every read task counts its row groups for all sampling epochs at once
(:func:`protclip.data.stages.metadata_counts`), and the driver adds up those partial counts (a few rows per row
group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa

from protclip.data.config import DataConfig
from protclip.data.parquet_files import ParquetInventory
from protclip.data.stages import BuildSplit, count_mix, metadata_counts, mix_key

MixDict = dict[tuple[bool, int, int], int]
_GROUP = ["reviewed", "protein_existence", "n_properties"]


@dataclass
class MixCounts:
    """Training mix per epoch, and the validation set that the cap selects."""

    train: dict[int, MixDict] = field(default_factory=dict)
    val_mix: MixDict = field(default_factory=dict)
    val_rows: int = 0
    val_threshold: float = 1.0  # validation rows are the candidates with hash u <= this
    # with the build's split: shard rows found in its val / test sets (before sampling), to check coverage
    heldout_rows: dict[str, int] = field(default_factory=dict)


def compute_mix(inv: ParquetInventory, data_cfg: DataConfig, build: BuildSplit | None = None) -> MixCounts:
    """One Ray pass over the metadata columns -> exact training mix of every epoch and the validation cap.

    ``build``: the ProtAnno build's held-out accessions (else the accession hash of ``data_cfg`` splits).
    """
    import ray.data

    frags = [f for f in inv.fragments if f.may_keep(data_cfg.sampling)]
    per_task = 1 if not data_cfg.read_parallelism else max(1, math.ceil(len(frags) / data_cfg.read_parallelism))
    items = [{"path": f.path, "row_group": f.row_group, "num_rows": f.num_rows} for f in frags]
    sampling_epochs = sorted(set(data_cfg.sampling_epochs))
    if not items:  # footer statistics prove that the sampler keeps nothing
        return MixCounts(train={e: {} for e in range(data_cfg.num_epochs)})
    fn = partial(metadata_counts, fs=inv.fs, uri=inv.uri, sampling=data_cfg.sampling,
                 sampling_epochs=sampling_epochs, val_fraction=data_cfg.val_fraction, val_seed=data_cfg.val_seed,
                 build=build)
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_task))
    ds = ds.map_batches(fn, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                        num_cpus=data_cfg.map_num_cpus)
    parts = ray.get(ds.to_arrow_refs())
    table = pa.concat_tables([p for p in parts if p.num_rows]) if any(p.num_rows for p in parts) else None
    out = MixCounts()
    by_sampling_epoch: dict[int, MixDict] = {e: {} for e in sampling_epochs}
    if table is not None:
        d = table.filter(pa.compute.equal(table["kind"], 0)).group_by(["epoch"] + _GROUP).aggregate(
            [("n", "sum")]).to_pydict()
        for e, r, p, k, n in zip(d["epoch"], d["reviewed"], d["protein_existence"], d["n_properties"], d["n_sum"],
                                 strict=True):
            by_sampling_epoch[int(e)][(bool(r), int(p), int(k))] = int(n)
        cand = table.filter(pa.compute.equal(table["kind"], 1))
        u = cand["u"].to_numpy()
        if data_cfg.val_max_rows is not None and len(u) > data_cfg.val_max_rows:
            out.val_threshold = float(np.sort(u)[data_cfg.val_max_rows - 1]) if data_cfg.val_max_rows else -1.0
        chosen = u <= out.val_threshold
        out.val_rows = int(chosen.sum())
        out.val_mix = count_mix(cand, chosen)
        if build is not None:
            for kind, name in ((2, "val"), (3, "test")):
                out.heldout_rows[name] = int(pa.compute.sum(table.filter(pa.compute.equal(table["kind"], kind))["n"])
                                             .as_py() or 0)
    for e, se in enumerate(data_cfg.sampling_epochs):
        out.train[e] = dict(sorted(by_sampling_epoch[se].items()))
    return out


def mix_metrics(mix: dict[int, MixDict]) -> dict[str, int]:
    """Flat MLflow form: ``mix/epoch0/sp_pe1_k4`` (sp = Swiss-Prot, tr = TrEMBL) plus ``mix/epoch0/total``."""
    out: dict[str, int] = {}
    for e, cells in sorted(mix.items()):
        for (r, p, k), n in sorted(cells.items()):
            out[f"mix/epoch{e}/{mix_key(r, p, k)}"] = int(n)
        out[f"mix/epoch{e}/total"] = int(sum(cells.values()))
    return out


def mix_table(mix: dict[int, MixDict]) -> dict[str, list]:
    """The realised mix as one long table (MLflow ``log_table``): one row per epoch and (source, PE, k) cell,
    ``source`` = ``swissprot`` | ``trembl``. Replaces hundreds of one-value metrics with one readable artifact."""
    cols: dict[str, list] = {"epoch": [], "source": [], "protein_existence": [], "n_properties": [], "rows": []}
    for e, cells in sorted(mix.items()):
        for (r, p, k), n in sorted(cells.items()):
            for col, v in zip(cols, (int(e), "swissprot" if r else "trembl", int(p), int(k), int(n)), strict=True):
                cols[col].append(v)
    return cols


def mix_summary(mix: dict[int, MixDict], val_rows: int) -> dict[str, float]:
    """A handful of numbers that sum the mix up (MLflow metrics at step 0): rows per epoch (mean, min, max),
    the Swiss-Prot share, the number of epochs and the validation rows."""
    totals = [sum(cells.values()) for _, cells in sorted(mix.items())]
    reviewed = sum(n for cells in mix.values() for (r, _, _), n in cells.items() if r)
    out = {"data/epochs": float(len(totals)), "data/val_rows": float(val_rows)}
    if totals:
        out |= {"data/train_rows_per_epoch_mean": float(np.mean(totals)),
                "data/train_rows_per_epoch_min": float(min(totals)),
                "data/train_rows_per_epoch_max": float(max(totals)),
                "data/swissprot_fraction": reviewed / sum(totals) if sum(totals) else 0.0}
    return out


def mix_figure(mix: dict[int, MixDict]):
    """Stacked bars: training rows per epoch by source and protein-existence level (an MLflow image artifact)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = sorted(mix)
    groups = sorted({(r, p) for cells in mix.values() for (r, p, _) in cells}, key=lambda g: (not g[0], g[1]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(epochs) + 3), 4))
    bottom = np.zeros(len(epochs))
    for r, p in groups:
        vals = np.array([sum(n for (rr, pp, _), n in mix[e].items() if (rr, pp) == (r, p)) for e in epochs], float)
        ax.bar(epochs, vals, bottom=bottom, label=f"{'Swiss-Prot' if r else 'TrEMBL'} PE{p}")
        bottom += vals
    ax.set_xlabel("epoch")
    ax.set_ylabel("training rows")
    ax.set_title("realised sampling mix")
    if groups:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
