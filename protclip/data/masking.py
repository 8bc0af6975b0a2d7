"""Cropping and masking of protein token ids (pure numpy; runs inside the collator on data workers).

Definitions (tested in tests/data/test_model_masking.py):
- **Crop.** A sequence longer than ``max_res`` residues keeps a window of exactly ``max_res`` residues: a
  uniformly random window in paper-mode training (as ProtST), the N-terminal prefix in released mode and at eval.
- **MLM (paper).** Exactly ``k = max(1, floor(p * n + 0.5))`` of the ``n`` real residues, drawn without
  replacement; never a special or padding token. Released mode draws each residue with probability ``p``.
- **BSR spans (paper).** Per sequence, non-overlapping contiguous spans, each of length ``U{span_min..span_max}``
  (capped at ``n``), separated from each other by at least one unmasked residue, are added until they cover at
  least ``t = ceil(fraction * n)`` residues. Every span is added whole, so the coverage is in ``[t, t + span_max)``.
  Only when no free gap can take another span (never for realistic ``n``) does it stop below ``t``.
- **BSR spans (released).** The released code's sampler, on purpose: one span range shared by the whole batch
  that random-walks downwards (``m ~ U{m//2..m}``), spans ``m + 1`` tokens long placed anywhere in the *padded*
  row until 15% of the padded length is covered, specials and padding dropped afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

#: Label of positions that no loss scores (torch cross-entropy's ``ignore_index``); the one definition.
IGNORE_INDEX = -100

#: UniProt positional feature types that can serve as BSR "static segments" (span_source = "features").
DEFAULT_SPAN_FEATURE_TYPES = [
    "DOMAIN", "REGION", "MOTIF", "ACT_SITE", "BINDING", "SITE", "METAL", "NP_BIND",
    "ZN_FING", "DNA_BIND", "REPEAT", "COILED", "COMPBIAS",
]  # fmt: skip


def crop_start(n_res: int, max_res: int, rng: np.random.Generator | None) -> int:
    """0-based first residue of the kept window: random when ``rng`` is given, else the N-terminal prefix."""
    if n_res <= max_res or rng is None:
        return 0
    return int(rng.integers(0, n_res - max_res + 1))


def mlm_count(n_res: int, probability: float) -> int:
    return max(1, math.floor(probability * n_res + 0.5)) if n_res > 0 else 0


def mlm_positions(n_res: int, probability: float, rng: np.random.Generator, exact: bool = True) -> np.ndarray:
    """Residue indices (0-based, sorted) chosen for MLM."""
    if exact:
        return np.sort(rng.choice(n_res, size=mlm_count(n_res, probability), replace=False))
    return np.flatnonzero(rng.random(n_res) < probability)


def apply_mask(
    ids: np.ndarray,
    positions: np.ndarray,
    mask_id: int,
    rng: np.random.Generator,
    replace: str = "mask",
    random_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Masked copy of ``ids`` and labels (original id at ``positions``, -100 elsewhere).

    ``replace="mask"``: all become ``mask_id``; ``"bert"``: 80% ``mask_id``, 10% a random id from
    ``random_ids``, 10% unchanged (still predicted).
    """
    masked = ids.copy()
    labels = np.full_like(ids, IGNORE_INDEX)
    labels[positions] = ids[positions]
    if replace == "mask":
        masked[positions] = mask_id
    elif replace == "bert":
        if random_ids is None:
            raise ValueError("replace='bert' needs random_ids")
        u = rng.random(len(positions))
        masked[positions[u < 0.8]] = mask_id
        swap = positions[(u >= 0.8) & (u < 0.9)]
        masked[swap] = rng.choice(random_ids, size=len(swap))
    else:
        raise ValueError(f"replace must be 'mask' or 'bert', got {replace!r}")
    return masked, labels


def span_target(n_res: int, fraction: float) -> int:
    return math.ceil(fraction * n_res) if n_res > 0 else 0


def _valid_starts(occupied: np.ndarray, length: int) -> np.ndarray:
    """Starts s where residues [s-1, s+length] (clipped) are all free: the span fits with a one-residue gap."""
    n = len(occupied)
    if length > n:
        return np.empty(0, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(occupied)])
    s = np.arange(0, n - length + 1)
    lo, hi = np.maximum(s - 1, 0), np.minimum(s + length + 1, n)
    return s[(cum[hi] - cum[lo]) == 0]


def _place(occupied: np.ndarray, start: int, length: int, spans: list[tuple[int, int]]) -> int:
    occupied[start : start + length] = True
    spans.append((start, start + length))
    return length


def random_spans(
    n_res: int,
    span_min: int,
    span_max: int,
    fraction: float,
    rng: np.random.Generator,
    occupied: np.ndarray | None = None,
    spans: list[tuple[int, int]] | None = None,
) -> list[tuple[int, int]]:
    """Paper-mode spans as ``[(start, end_exclusive)]`` in residue coordinates (see module docstring).

    ``occupied``/``spans`` continue an existing selection (feature spans placed first).
    """
    occupied = np.zeros(n_res, dtype=bool) if occupied is None else occupied
    spans = [] if spans is None else spans
    target = span_target(n_res, fraction)
    covered = int(occupied.sum())
    lo = min(span_min, n_res)
    while covered < target:
        length = min(int(rng.integers(span_min, span_max + 1)), n_res)
        starts = _valid_starts(occupied, length)
        while len(starts) == 0 and length > lo:  # fragmented: try shorter spans, never below span_min
            length -= 1
            starts = _valid_starts(occupied, length)
        if len(starts) == 0:
            break
        covered += _place(occupied, int(rng.choice(starts)), length, spans)
    return sorted(spans)


def feature_spans(
    features: Iterable[Mapping],
    offset: int,
    n_res: int,
    types: set[str],
    span_min: int,
    span_max: int,
    fraction: float,
    rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """Spans taken from UniProt positional features, then topped up with random spans to the target.

    ``features`` are ``{type, start, end}`` with 1-based inclusive residue positions in the *full* sequence;
    ``offset`` is the crop start. A feature longer than ``span_max`` yields a random window of
    ``U{span_min..span_max}`` inside it; a shorter one than ``span_min`` (a site) is widened to ``span_min``
    around it, so every span obeys the same length rule as random spans.
    """
    cands: list[tuple[int, int]] = []
    for f in features:
        if f.get("type") not in types or f.get("start") is None or f.get("end") is None:
            continue
        a, b = max(int(f["start"]) - 1 - offset, 0), min(int(f["end"]) - offset, n_res)
        if b <= a:
            continue  # outside the crop window
        size = b - a
        if size > span_max:
            length = int(rng.integers(span_min, span_max + 1))
            a = a + int(rng.integers(0, size - length + 1))
            b = a + length
        elif size < span_min:
            length = min(span_min, n_res)
            lo, hi = max(0, b - length), min(a, n_res - length)
            a = int(rng.integers(lo, hi + 1))
            b = a + length
        cands.append((a, b))
    occupied = np.zeros(n_res, dtype=bool)
    spans: list[tuple[int, int]] = []
    target, covered = span_target(n_res, fraction), 0
    for i in rng.permutation(len(cands)):
        if covered >= target:
            break
        a, b = cands[i]
        if not occupied[max(a - 1, 0) : min(b + 1, n_res)].any():
            covered += _place(occupied, a, b - a, spans)
    return random_spans(n_res, span_min, span_max, fraction, rng, occupied=occupied, spans=spans)


def spans_to_positions(spans: list[tuple[int, int]]) -> np.ndarray:
    if not spans:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b) for a, b in spans]).astype(np.int64)


def released_fragment_mask(
    maskable: np.ndarray, mask_range: int, rng: np.random.Generator, fraction: float = 0.15
) -> np.ndarray:
    """The released span sampler over a padded batch: ``maskable`` ``[B, Lpad]`` is True on real residues.

    Reproduces its defects on purpose: the span range ``m`` is shared across rows and drifts downwards, targets
    and starts use the padded length, so short rows of a long batch get fewer than 15% masked (or none).
    """
    bsz, lpad = maskable.shape
    area = np.zeros((bsz, lpad), dtype=bool)
    m = lpad // 2 if lpad < mask_range * 1.5 else mask_range
    for b in range(bsz):
        while area[b].sum() < lpad * fraction:
            m = int(rng.integers(m // 2, m + 1))
            hi = max(1, lpad - m - 1)  # the released code's start range [1, Lpad - m - 1]
            start = int(rng.integers(1, hi + 1))
            while area[b, start]:
                start = int(rng.integers(1, hi + 1))
            area[b, start : start + m + 1] = True
    return area & maskable
