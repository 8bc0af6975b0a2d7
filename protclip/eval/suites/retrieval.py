"""Cross-modal retrieval on held-out ProtAnno rows: protein -> text and text -> protein, R@1/5/10 and MRR.

Each row's protein is embedded with ``embed_proteins`` and its text with ``embed_texts``; similarity is
cosine. A candidate counts as correct when it is the row's own partner *or* indistinguishable from it: the
same text (for p2t) or the same sequence (for t2p) — ProtAnno has many identical texts (e.g. "PROTEIN NAME:
Uncharacterized protein."), which would otherwise make the metric depend on arbitrary tie order. Ties in
score are handled in expectation (see :func:`protclip.metrics.retrieval_metrics`).

R@k and MRR depend on the candidate pool size N (chance R@1 = 1/N), so ``max_examples`` is fixed by default
(1000, a deterministic hash subsample); compare runs only at equal N.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protclip import metrics as M
from protclip.data.formats import FormatError, clean_sequence, read_table_frame
from protclip.data.formats.core import iter_rows
from protclip.data.holdout import load_split_rows
from protclip.data.splits import subsample_by_hash
from protclip.eval.embedder import Embedder
from protclip.eval.suites import figures
from protclip.eval.suites.base import SuiteConfig, SuiteResult, clean_metrics, require


@dataclass(kw_only=True)
class RetrievalConfig(SuiteConfig):
    # held-out ProtAnno rows: a ProtAnno build folder (local or s3://...), or one Parquet (schema v1) / CSV / TSV
    # file with the columns below
    path: str = ""
    # with a ProtAnno folder: the build's held-out split to evaluate ("test" for final numbers, "val", "train");
    # None = every row of the folder (or of the file)
    split: str | None = None
    format: str = "auto"  # csv | tsv | parquet | auto (by extension)
    sequence_column: str = "sequence"
    text_column: str = "text"
    id_column: str = "accession"
    max_examples: int | None = 1000  # candidate pool size N (metrics depend on it); None = all rows
    heatmap_size: int = 32  # rows/columns of the similarity heatmap figure
    on_error: str = "raise"  # malformed rows: "raise" or "skip"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.path), "path must be set")
        require(self.format in ("auto", "csv", "tsv", "parquet"), f"bad format {self.format!r}")
        require(self.heatmap_size >= 1, f"heatmap_size must be >= 1, got {self.heatmap_size}")
        require(self.on_error in ("raise", "skip"), f"bad on_error {self.on_error!r}")
        require(self.split in (None, "train", "val", "test"), f"bad split {self.split!r} (train, val, test or null)")


def load_pairs(cfg: RetrievalConfig) -> tuple[list[str], list[str], list[str], list[str]]:
    """(ids, sequences, texts, errors) of the usable rows, subsampled to ``max_examples``."""
    path = Path(cfg.path)
    columns = (cfg.sequence_column, cfg.text_column, cfg.id_column)
    fmt = cfg.format
    if cfg.split is not None or "://" in cfg.path or path.is_dir():  # a ProtAnno folder (or prefix)
        df = load_split_rows(cfg.path, cfg.split, list(dict.fromkeys(columns))).to_pandas()
        fmt = "parquet"
    elif not path.is_file():
        raise FileNotFoundError(f"RetrievalConfig: data file {path} does not exist")
    else:
        df = read_table_frame(path, fmt, columns, True)

    def parse(where: str, row: dict[str, Any]) -> tuple[str, str, str]:
        seq = clean_sequence(row[cfg.sequence_column], path, where, cfg.sequence_column)
        text = row[cfg.text_column]
        if not isinstance(text, str) or not text.strip():
            raise FormatError(path, where, cfg.text_column, "empty text")
        return str(row[cfg.id_column]), seq, text.strip()

    rows, _, errors = iter_rows(path, df, fmt, parse, cfg.on_error)
    if cfg.max_examples is not None:
        rows = [rows[i] for i in subsample_by_hash([r[0] for r in rows], cfg.max_examples, cfg.seed)]
    if len(rows) < 2:
        raise ValueError(f"{path}: retrieval needs at least 2 usable rows, got {len(rows)}")
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], errors


def positives_matrix(sequences: list[str], texts: list[str]) -> np.ndarray:
    """``pos[i, j]``: row j's protein/text is an equally right answer for row i (same text or same sequence)."""
    t = np.unique(texts, return_inverse=True)[1]
    s = np.unique(sequences, return_inverse=True)[1]
    return (t[:, None] == t[None, :]) | (s[:, None] == s[None, :])


def run(cfg: RetrievalConfig, embedder: Embedder) -> SuiteResult:
    ids, seqs, texts, errors = load_pairs(cfg)
    prot = embedder.embed_proteins(seqs, cfg.batch_size)
    text = embedder.embed_texts(texts, cfg.batch_size)
    if prot.shape[0] != len(seqs) or text.shape[0] != len(texts) or prot.shape[1] != text.shape[1]:
        raise ValueError(f"embedding shapes {prot.shape} (proteins) and {text.shape} (texts) do not pair up")
    sim = M.similarity_matrix(prot, text)  # [protein i, text j]
    pos = positives_matrix(seqs, texts)
    metrics = {f"p2t_{k}": v for k, v in M.retrieval_metrics(sim, pos).items()}
    metrics |= {f"t2p_{k}": v for k, v in M.retrieval_metrics(sim.T, pos.T).items()}
    # chance level of this pool: a constant score matrix (ties broken at random) with the same positives;
    # pos is symmetric, so one set serves both directions
    metrics |= {f"chance_{k}": v for k, v in M.retrieval_metrics(np.zeros_like(sim), pos).items()}
    scale = getattr(embedder, "logit_scale", None)
    if scale is not None:  # the GC objective on these pairs at the model's own temperature; chance = ln N
        metrics["gc_loss"] = M.symmetric_infonce(sim, float(scale))
        metrics["gc_loss_chance"] = float(np.log(len(ids)))
    figs = {}
    if cfg.make_figures:
        k = min(cfg.heatmap_size, len(ids))
        figs["similarity"] = figures.heatmap(
            sim[:k, :k], f"protein-text cosine (first {k} of {len(ids)})", "text", "protein"
        )
    info = {
        "n_malformed_skipped": len(errors),
        "malformed_examples": errors[:5],
        "n_unique_texts": len(set(texts)),
    }
    return SuiteResult(clean_metrics(metrics), figs, len(ids), info)
