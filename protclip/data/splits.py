"""Deterministic, order-independent data splits.

Each id is hashed on its own (``sha256(f"{seed}:{id}")``) to a number in [0, 1) that picks its bucket, so
an id's split depends only on (id, seed, fractions): it does not move when rows are added, removed or
reordered, and duplicate ids always land together (no leak of a repeated protein across splits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def hash_unit(key: str, seed: int = 0) -> float:
    """Map (key, seed) to a uniform-looking float in [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_hash(ids: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Split positions ``0..len(ids)-1`` into ``len(fractions)`` index arrays (ascending), by hashed id.

    ``fractions`` must be non-negative and sum to 1; bucket sizes follow them in expectation, not exactly.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or len(fr) == 0 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {list(fractions)}")
    edges = np.cumsum(fr)
    edges[-1] = 1.0 + 1e-12  # u < 1 always falls in some bucket
    u = np.array([hash_unit(str(i), seed) for i in ids], dtype=np.float64)
    bucket = np.searchsorted(edges, u, side="right")
    return [np.flatnonzero(bucket == b) for b in range(len(fr))]


def subsample_by_hash(ids: Sequence[str], n: int, seed: int = 0) -> np.ndarray:
    """The ``n`` positions with the smallest id hashes (ascending positions): a stable deterministic sample.

    The hash is salted differently from :func:`split_by_hash`, so a subsample taken with the same seed is not
    biased towards the first split bucket.
    """
    if n >= len(ids):
        return np.arange(len(ids))
    u = np.array([hash_unit(f"subsample/{i}", seed) for i in ids], dtype=np.float64)
    return np.sort(np.argsort(u, kind="stable")[:n])
