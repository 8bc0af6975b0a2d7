"""Length-aware batching of variable-length sequences for inference (embedding, prediction)."""

from __future__ import annotations


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
