"""Length-aware batching: similar-length batches for inference (embedding, prediction), and token-budget
micro-batches for packed (padding-free) training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Group indices into batches of similar length (longest first) so padding stays small.

    A batch holds at most ``batch_size`` items and, when ``max_tokens`` is set, at most ``max_tokens`` padded
    tokens (a single item longer than the budget still gets its own batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        # sorted longest first, so the first item of a batch fixes its padded length
        too_many_tokens = max_tokens is not None and cur and (len(cur) + 1) * lengths[cur[0]] > max_tokens
        if len(cur) == batch_size or too_many_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def token_budget_batches(
    order: Sequence[int] | np.ndarray,
    protein_tokens: np.ndarray,
    text_tokens: np.ndarray,
    max_tokens: int,
    max_text_tokens: int,
) -> list[np.ndarray]:
    """Cut ``order`` (row indices, already shuffled) into consecutive micro-batches of at most ``max_tokens``
    protein tokens and ``max_text_tokens`` text tokens, keeping the order (no length sorting): a micro-batch is
    closed when the next row would overflow either budget. Every row lands in exactly one micro-batch; a row
    larger than a budget on its own is an error (crop lengths must fit the budgets).
    """
    order = np.asarray(order, dtype=np.int64)
    p, t = np.asarray(protein_tokens, dtype=np.int64), np.asarray(text_tokens, dtype=np.int64)
    too_big = [int(i) for i in order if p[i] > max_tokens or t[i] > max_text_tokens]
    if too_big:
        i = too_big[0]
        raise ValueError(f"row {i} has {p[i]} protein / {t[i]} text tokens, above the micro-batch budget "
                         f"({max_tokens} / {max_text_tokens}); raise data.max_tokens or lower the crop length")
    groups: list[np.ndarray] = []
    start, used_p, used_t = 0, 0, 0
    for j, i in enumerate(order):
        if j > start and (used_p + p[i] > max_tokens or used_t + t[i] > max_text_tokens):
            groups.append(order[start:j])
            start, used_p, used_t = j, 0, 0
        used_p, used_t = used_p + p[i], used_t + t[i]
    if len(order) > start:
        groups.append(order[start:])
    return groups


def packed_micro_batches(token_counts: np.ndarray, max_tokens: int, window_rows: int, seed: int) -> int:
    """Micro-batches that :func:`token_budget_batches` makes from one epoch's rows (``token_counts``: protein
    tokens per row), for the step estimate of packed training.

    The pipeline packs each shuffle buffer of ``window_rows`` rows on its own, in a random order, and only the
    buffer's last micro-batch is under-filled; so this packs a seeded permutation of the same rows buffer by
    buffer with the same greedy rule. Only the order differs from the pipeline's, which moves a buffer's count
    by about one micro-batch. Text budgets are not simulated (text token counts need the tokenizer): where the
    text budget binds first the pipeline makes more micro-batches than this. Cost: one ``searchsorted`` per
    micro-batch, not a Python step per row.
    """
    if window_rows < 1:
        raise ValueError(f"window_rows must be >= 1, got {window_rows}")
    p = np.asarray(token_counts, dtype=np.int64)
    if p.size and int(p.max()) > max_tokens:
        raise ValueError(f"a row has {int(p.max())} protein tokens, above max_tokens {max_tokens}")
    p = p[np.random.default_rng(seed).permutation(p.size)]
    n = 0
    for s in range(0, p.size, window_rows):
        cs = np.cumsum(p[s : s + window_rows])
        start, base = 0, 0
        while start < cs.size:
            # rows join while the running total stays within the budget: the next one that overflows starts anew
            start = int(np.searchsorted(cs, base + max_tokens, side="right"))
            base = int(cs[start - 1])
            n += 1
    return n
