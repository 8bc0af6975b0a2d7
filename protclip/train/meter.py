"""Throughput, padding, data-wait and MFU accounting between two log steps (torchtitan ``docs/metrics.md``).

``pairs/s`` and ``tokens/s`` are global (all ranks); tokens are the real (non-padding, "unpadded") protein and
text tokens fed to the towers per pair (full text; sub-texts are counted in FLOPs, not in tokens/s);
``tokens_per_s_per_device`` divides them by the ranks, ``padded_tokens_per_s`` counts every token slot the
towers computed (padding included; equal to tokens/s for packed batches). ``data_wait_share`` is
the share of step time spent waiting for the next micro-batch; ``padding_share`` the share of padded protein
and text token slots. MFU follows :mod:`protclip.train.flops` and is absent where the device peak is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from protclip.data.collate import batch_rows, is_packed
from protclip.dist import sum_over_ranks
from protclip.model.losses.registry import needed_passes
from protclip.train.flops import mfu, pass_flops, tower_shape

__all__ = ["StepMeter", "step_flops_fn"]


def step_flops_fn(model: torch.nn.Module, cfg) -> Callable[[Sequence[dict[str, torch.Tensor]]], float]:
    """FLOPs of one step's micro-batches for this model and objective set (call before sharding)."""
    p_shape, t_shape = tower_shape(model.protein_tower), tower_shape(model.text_tower)
    passes, released, frozen_text = needed_passes(cfg.loss), cfg.model.mode == "released", cfg.model.freeze_text
    span = "span" in passes
    protein_grad = int("protein" in passes) + int("mlm" in passes) + int(span and not released)
    protein_nograd = int(span and released)  # released BSR runs its span pass under no_grad
    text_full, subtexts = "text" in passes, "subtexts" in passes

    def flops(mbs: Sequence[dict[str, torch.Tensor]]) -> float:
        total = 0.0
        for mb in mbs:
            plen = _lengths(mb, "protein")
            total += protein_grad * pass_flops(p_shape, plen, with_grad=True)
            total += protein_nograd * pass_flops(p_shape, plen, with_grad=False)
            if text_full:
                tlen = _lengths(mb, "text")
                total += pass_flops(t_shape, tlen, with_grad=not frozen_text)
            if subtexts:
                slen = _lengths(mb, "subtext")
                total += pass_flops(t_shape, slen, with_grad=False)
        return total

    return flops


def _lengths(mb: dict[str, torch.Tensor], group: str) -> list[int]:
    """Real length of every sequence of ``group`` (protein, text, subtext): from the boundaries of a packed
    batch (its mask is one row of ones), else from the padded attention mask."""
    if is_packed(mb):
        return torch.diff(mb[f"{group}_cu_seqlens"]).tolist()
    return mb[f"{group}_attention_mask"].sum(-1).reshape(-1).tolist()


class StepMeter:
    """Sums per-rank counters between log steps; :meth:`metrics` all-reduces them (call on every rank)."""

    _KEYS = ("steps", "rows", "real", "slots", "flops", "t_data", "t_step")

    def __init__(self, peak: float | None, world: int) -> None:
        self.peak, self.world = peak, world
        self._reset()

    def _reset(self) -> None:
        self.acc = dict.fromkeys(self._KEYS, 0.0)

    def update(self, mbs: Sequence[dict[str, torch.Tensor]], t_step: float, t_data: float, flops: float) -> None:
        a = self.acc
        a["steps"] += 1
        a["t_step"] += t_step
        a["t_data"] += t_data
        a["flops"] += flops
        for mb in mbs:
            a["rows"] += batch_rows(mb)
            for key in ("protein_attention_mask", "text_attention_mask"):
                if key in mb:
                    a["real"] += float(mb[key].sum())
                    a["slots"] += mb[key].numel()

    def metrics(self, device: torch.device) -> dict[str, float | None]:
        s = sum_over_ranks(self.acc, device)
        self._reset()
        if s["steps"] == 0 or s["t_step"] <= 0:
            return {}
        wall = s["t_step"] / self.world  # summed over ranks -> mean wall time of the interval
        out: dict[str, float | None] = {
            "perf/step_time_s": wall / (s["steps"] / self.world),
            "perf/pairs_per_s": s["rows"] / wall,
            "perf/tokens_per_s": s["real"] / wall,
            "perf/tokens_per_s_per_device": s["real"] / wall / self.world,
            "perf/padded_tokens_per_s": s["slots"] / wall,
            "perf/data_wait_share": s["t_data"] / s["t_step"],
            "perf/padding_share": 1.0 - s["real"] / s["slots"] if s["slots"] else 0.0,
            "perf/mfu": mfu(s["flops"], wall, self.world, self.peak),
        }
        if device.type == "cuda":
            out["perf/max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return out
