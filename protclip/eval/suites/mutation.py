"""Zero-shot mutation effect from MLM masked marginals (Meier et al. 2021), Spearman against measured fitness.

For a variant with substitutions at positions P of wild type ``wt``, all of P are masked together in ``wt``
and the score is  sum_{p in P} [log p(mt_p | wt with P masked) - log p(wt_p | wt with P masked)].
Variants sharing (wild type, position set) share one forward pass; for single-site scans that is one pass per
position. Metric: ``spearman`` between score and measured fitness (higher score = predicted fitter).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protclip import metrics as M
from protclip.data.alphabet import AA_INDEX
from protclip.data.formats import MutationSet, read_fasta, read_mutations
from protclip.data.splits import subsample_by_hash
from protclip.eval.embedder import Embedder
from protclip.eval.suites import figures
from protclip.eval.suites.base import SuiteConfig, SuiteResult, clean_metrics, require


@dataclass(kw_only=True)
class MutationConfig(SuiteConfig):
    path: str = ""  # mutation table (CSV / TSV / Parquet)
    format: str = "auto"  # csv | tsv | parquet | auto
    wt_sequence: str | None = None  # the wild type, inline ...
    wt_fasta: str | None = None  # ... or the first record of this FASTA ...
    wt_column: str | None = None  # ... or per row, in this column (exactly one of the three)
    mutant_column: str = "mutant"  # "A123G" or "A123G:K45R"
    score_column: str = "score"  # measured fitness, higher = fitter
    first_position: int = 1  # number of the wild type's first residue in the mutant strings
    batch_size: int = 8  # masked sequences per forward pass
    on_error: str = "raise"  # malformed rows: "raise" or "skip"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.path), "path must be set")
        n_wt = sum(x is not None for x in (self.wt_sequence, self.wt_fasta, self.wt_column))
        require(n_wt == 1, "give exactly one of wt_sequence, wt_fasta, wt_column")
        require(self.format in ("auto", "csv", "tsv", "parquet"), f"bad format {self.format!r}")
        require(self.on_error in ("raise", "skip"), f"bad on_error {self.on_error!r}")


def score_variants(embedder: Embedder, data: MutationSet, batch_size: int = 8) -> np.ndarray:
    """Masked-marginal log-likelihood ratio per variant (see module docstring)."""
    patterns: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for wt, muts in zip(data.wt_sequences, data.mutations, strict=True):
        key = tuple(sorted(m.position for m in muts))
        if key not in patterns[wt]:
            patterns[wt].append(key)
    logp: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
    for wt, keys in patterns.items():
        if hasattr(embedder, "mlm_log_probs_batch"):
            outs = embedder.mlm_log_probs_batch(wt, [list(k) for k in keys], batch_size)  # type: ignore[attr-defined]
        else:
            outs = [embedder.mlm_log_probs(wt, list(k)) for k in keys]
        for k, lp in zip(keys, outs, strict=True):
            lp = np.asarray(lp, dtype=np.float64)
            if lp.shape != (len(k), 20):
                raise ValueError(f"mlm_log_probs returned shape {lp.shape}, expected {(len(k), 20)}")
            logp[(wt, k)] = lp
    scores = np.empty(len(data.scores))
    for i, (wt, muts) in enumerate(zip(data.wt_sequences, data.mutations, strict=True)):
        key = tuple(sorted(m.position for m in muts))
        lp = logp[(wt, key)]
        row = {p: r for r, p in enumerate(key)}
        scores[i] = sum(
            lp[row[m.position], AA_INDEX[m.mt]] - lp[row[m.position], AA_INDEX[m.wt]] for m in muts
        )
    return scores


def load(cfg: MutationConfig) -> MutationSet:
    if not Path(cfg.path).is_file():
        raise FileNotFoundError(f"MutationConfig: data file {cfg.path} does not exist")
    wt = cfg.wt_sequence
    if cfg.wt_fasta is not None:
        wt = read_fasta(cfg.wt_fasta)[0].sequence
    data = read_mutations(
        cfg.path,
        wt_sequence=wt,
        wt_column=cfg.wt_column,
        mutant_column=cfg.mutant_column,
        score_column=cfg.score_column,
        first_position=cfg.first_position,
        fmt=cfg.format,
        on_error=cfg.on_error,
    )
    if cfg.max_examples is not None and len(data) > cfg.max_examples:
        keep = subsample_by_hash(
            [f"{w}/{m}" for w, m in zip(data.wt_sequences, data.ids, strict=True)], cfg.max_examples, cfg.seed
        )
        data = MutationSet(
            ids=[data.ids[i] for i in keep],
            wt_sequences=[data.wt_sequences[i] for i in keep],
            mutations=[data.mutations[i] for i in keep],
            scores=[data.scores[i] for i in keep],
            source=data.source,
            errors=data.errors,
        )
    if len(data) == 0:
        raise ValueError(f"{cfg.path}: no usable variants ({len(data.errors)} malformed)")
    return data


def run(cfg: MutationConfig, embedder: Embedder) -> SuiteResult:
    data = load(cfg)
    pred = score_variants(embedder, data, cfg.batch_size)
    measured = np.asarray(data.scores)
    metrics = {"spearman": M.spearman(measured, pred)}
    figs = {}
    if cfg.make_figures:
        figs["scatter"] = figures.scatter(
            pred, measured, "mutation effect", "masked-marginal score", "measured fitness"
        )
    n_multi = sum(len(m) > 1 for m in data.mutations)
    info = {
        "n_multi_mutants": n_multi,
        "n_malformed_skipped": len(data.errors),
        "malformed_examples": data.errors[:5],
    }
    return SuiteResult(clean_metrics(metrics), figs, len(data), info)
