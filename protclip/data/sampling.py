"""Property-driven sampling (ProtCLIP ``sampling.py``), made deterministic and configurable.

Keep probability of an unreviewed entry with PE level ``pe`` and property coverage ``k``::

    p = (k / 4) ** coverage_exponent / pe ** confidence_exponent     if pe <= max_pe and k >= min_k
    p = 0                                                             otherwise

Reviewed (Swiss-Prot) entries are always kept when ``keep_reviewed``. The keep decision is ``u < p`` with
``u = row_uniform(accession, seed, epoch)``, a hash mapped to [0, 1): stateless and order-independent, so
any split of the data over batches, workers or restarts gives the same subset. ``mode="once"`` always uses
epoch 0 (the paper: one fixed subset); ``"per_epoch"`` draws afresh each epoch; ``"none"`` keeps everything.

Everything here is pure numpy and runs inside Ray Data ``map_batches``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MODES = ("none", "once", "per_epoch")
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Knobs of the property-driven sampler (defaults = the paper / released code)."""

    mode: str = (
        "once"  # "none" (keep all), "once" (one fixed subset, the paper), "per_epoch" (fresh draw per epoch)
    )
    seed: int = 0  # hash seed; change it to draw a different subset
    coverage_exponent: float = 0.5  # a in (k/4)^a
    confidence_exponent: float = 3.0  # b in 1/PE^b
    max_pe: int = 3  # unreviewed entries with PE above this are dropped
    min_k: int = 3  # unreviewed entries with fewer properties than this are dropped
    keep_reviewed: bool = True  # Swiss-Prot entries bypass the sampler

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sampling.mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= _M64:
            raise ValueError(f"sampling.seed must be an integer in [0, 2**64), got {self.seed!r}")
        for name in ("coverage_exponent", "confidence_exponent"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"sampling.{name} must be a finite number >= 0, got {v!r}")
        if isinstance(self.max_pe, bool) or not isinstance(self.max_pe, int) or not 1 <= self.max_pe <= 5:
            raise ValueError(f"sampling.max_pe must be an integer in 1..5, got {self.max_pe!r}")
        if isinstance(self.min_k, bool) or not isinstance(self.min_k, int) or not 1 <= self.min_k <= 4:
            raise ValueError(f"sampling.min_k must be an integer in 1..4, got {self.min_k!r}")
        if not isinstance(self.keep_reviewed, bool):
            raise ValueError(f"sampling.keep_reviewed must be a bool, got {self.keep_reviewed!r}")


def _check_levels(pe: np.ndarray, k: np.ndarray) -> None:
    if pe.size and (pe.min() < 1 or pe.max() > 5):
        raise ValueError(f"protein_existence must be in 1..5, got values in [{pe.min()}, {pe.max()}]")
    if k.size and (k.min() < 1 or k.max() > 4):
        raise ValueError(f"n_properties must be in 1..4, got values in [{k.min()}, {k.max()}]")


def sampling_weight(pe: Any, k: Any, cfg: SamplingConfig) -> Any:
    """``(k/4)^a / PE^b`` (no thresholds); scalars in, float out; arrays in, float64 array out."""
    pe_a = np.asarray(pe, dtype=np.float64)
    k_a = np.asarray(k, dtype=np.float64)
    w = (k_a / 4.0) ** cfg.coverage_exponent / pe_a**cfg.confidence_exponent
    return float(w) if np.ndim(w) == 0 else w


def keep_probability(reviewed: Any, pe: Any, k: Any, cfg: SamplingConfig) -> np.ndarray:
    """Per-row keep probability: 1 for reviewed (if kept), 0 below thresholds, else the weight."""
    pe_a = np.asarray(pe, dtype=np.int64)
    k_a = np.asarray(k, dtype=np.int64)
    rev = np.asarray(reviewed, dtype=bool)
    _check_levels(pe_a, k_a)
    p = np.where((pe_a <= cfg.max_pe) & (k_a >= cfg.min_k), sampling_weight(pe_a, k_a, cfg), 0.0)
    if cfg.keep_reviewed:
        p = np.where(rev, 1.0, p)
    return np.minimum(p, 1.0)


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def _as_bytes_array(accessions: Any) -> np.ndarray:
    if hasattr(accessions, "to_numpy"):  # pyarrow / pandas
        accessions = (
            accessions.to_numpy(zero_copy_only=False)
            if "pyarrow" in type(accessions).__module__
            else accessions.to_numpy()
        )
    a = np.asarray(accessions)
    if a.dtype.kind == "S":
        return a
    if a.dtype.kind == "U":
        return np.char.encode(a, "utf-8")
    return np.array([str(x).encode("utf-8") for x in a.ravel()], dtype=bytes).reshape(a.shape)


def row_uniform(accessions: Any, seed: int, epoch: int) -> np.ndarray:
    """Deterministic u in [0, 1) per accession from (seed, epoch, accession bytes).

    A splitmix64 chain over the UTF-8 bytes read as little-endian 64-bit words, then the byte length; the top
    53 bits give u. Pure integer arithmetic: identical on every platform, process and batch split (each row
    only sees its own words). :func:`row_uniform_scalar` is the reference implementation.
    """
    b = _as_bytes_array(accessions).ravel()
    n = b.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    width = max(b.dtype.itemsize, 1)
    nwords = (width + 7) // 8
    padded = np.zeros((n, nwords * 8), dtype=np.uint8)
    padded[:, :width] = np.frombuffer(b.tobytes(), dtype=np.uint8).reshape(n, width)
    words = padded.view("<u8").astype(np.uint64)
    lengths = np.char.str_len(b).astype(np.uint64)
    with np.errstate(over="ignore"):
        h0 = _splitmix(np.array([(seed ^ _splitmix_int(epoch + _GOLDEN)) & _M64], dtype=np.uint64))[0]
        h = np.full(n, h0, dtype=np.uint64)
        for i in range(nwords):
            nh = _splitmix((h ^ words[:, i]) + np.uint64(_GOLDEN))
            h = np.where(lengths > np.uint64(8 * i), nh, h)
        h = _splitmix(h ^ lengths)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _splitmix_int(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return z ^ (z >> 31)


def row_uniform_scalar(accession: str, seed: int, epoch: int) -> float:
    """Pure-Python reference of :func:`row_uniform` for one accession (used in tests and for debugging)."""
    data = accession.encode("utf-8")
    h = _splitmix_int((seed ^ _splitmix_int(epoch + _GOLDEN)) & _M64)
    for i in range(0, len(data), 8):
        w = int.from_bytes(data[i : i + 8].ljust(8, b"\0"), "little")
        h = _splitmix_int((h ^ w) + _GOLDEN)
    h = _splitmix_int(h ^ len(data))
    return (h >> 11) * (1.0 / (1 << 53))


def keep_mask(
    reviewed: Any, pe: Any, k: Any, accessions: Any, cfg: SamplingConfig, epoch: int = 0
) -> np.ndarray:
    """Boolean keep decision per row (the function Ray Data ``map_batches`` calls)."""
    rev = np.asarray(reviewed, dtype=bool)
    n = rev.shape[0]
    for name, col in (("protein_existence", pe), ("n_properties", k), ("accession", accessions)):
        if len(col) != n:
            raise ValueError(f"keep_mask: column {name} has {len(col)} rows, reviewed has {n}")
    if cfg.mode == "none":
        return np.ones(n, dtype=bool)
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
    p = keep_probability(rev, pe, k, cfg)
    u = row_uniform(accessions, cfg.seed, 0 if cfg.mode == "once" else int(epoch))
    return u < p


def expected_keep_table(cfg: SamplingConfig | None = None) -> dict[tuple[int, int], float]:
    """Keep probability of an unreviewed entry for every (PE, k), for docs and logging."""
    cfg = cfg or SamplingConfig()
    pe = np.repeat(np.arange(1, 6), 4)
    k = np.tile(np.arange(1, 5), 5)
    p = keep_probability(np.zeros(pe.size, dtype=bool), pe, k, cfg)
    return {(int(a), int(b)): float(c) for a, b, c in zip(pe, k, p, strict=True)}


def format_keep_table(cfg: SamplingConfig | None = None, ks: Sequence[int] = (1, 2, 3, 4)) -> str:
    """Markdown table of :func:`expected_keep_table` (rows PE 1..5, columns k)."""
    t = expected_keep_table(cfg)
    lines = ["| PE \\ k | " + " | ".join(str(k) for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for pe in range(1, 6):
        lines.append(f"| {pe} | " + " | ".join(f"{t[(pe, k)]:.4g}" for k in ks) + " |")
    return "\n".join(lines)
