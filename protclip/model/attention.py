"""Attention backends for both towers, plugged in through transformers' attention interface.

``xformers`` is registered as a custom attention function. Three traps of transformers 5.23:
1. the name must also be registered in ``AttentionMaskInterface``, or the padding mask is silently dropped;
2. ESM pre-scales the query and passes ``scaling=1.0``, so the scale must be forwarded, not defaulted;
3. ``_from_config(cfg, attn_implementation=...)`` writes into ``cfg``: configs are deep-copied by the caller.

Without xformers or off CUDA the function emulates the kernel with torch SDPA, but through the *same*
additive-bias construction the GPU path feeds xformers, so the padding logic is exercised in CPU tests.

Packed batches (padding-free training): a micro-batch is one row ``[1, T]`` of concatenated sequences whose
boundaries travel to every attention call as the ``packed`` keyword (a :class:`PackedSeqs`; transformers passes
unknown keywords from the tower's ``forward`` down to the attention function). Tokens attend only inside their
own sequence: xformers ``BlockDiagonalMask`` on CUDA, a per-sequence SDPA loop for ``sdpa`` (exact, and its cost
follows ``sum len^2``), a dense block-diagonal bias for ``eager`` (checks) and for the xformers emulation.
transformers' own ``sdpa``/``eager`` would ignore the keyword and attend across sequences, so the towers are
built with the packed-aware wrappers of :data:`PACKED_AWARE`, which call transformers' functions unchanged on
padded batches (bit-identical).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

_logger = logging.getLogger(__name__)

BACKENDS = ("auto", "xformers", "sdpa", "eager")

try:  # optional GPU extra; there are no CPU kernels
    import xformers.ops as xops  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import failure (missing, CUDA libs absent) means "not available"
    xops = None


def xformers_available() -> bool:
    return xops is not None and torch.cuda.is_available()


def resolve_backend(name: str, device: torch.device | str | None = None) -> str:
    """Map the config value to a registered implementation name (``auto`` -> xformers on CUDA, else sdpa)."""
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    if name != "auto":
        return name
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return "xformers" if (on_cuda and xops is not None) else "sdpa"


@dataclass(frozen=True, eq=False)
class PackedSeqs:
    """Sequence boundaries of a packed row: ``cu_seqlens`` ``[n+1]`` (on the tokens' device) and the lengths as
    Python ints (read once per forward, so no layer syncs with the device to learn them)."""

    cu_seqlens: torch.Tensor
    seqlens: tuple[int, ...]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor) -> PackedSeqs:
        lens = tuple(int(x) for x in torch.diff(cu_seqlens.detach().cpu()).tolist())
        if not lens or min(lens) < 1:
            raise ValueError(f"packed batch: cu_seqlens must list >= 1 non-empty sequences, got lengths {lens}")
        return cls(cu_seqlens=cu_seqlens, seqlens=lens)

    @property
    def total(self) -> int:
        return sum(self.seqlens)

    def segment_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[T]``: the index of the sequence each token belongs to."""
        lens = torch.tensor(self.seqlens, device=device or self.cu_seqlens.device)
        return torch.repeat_interleave(torch.arange(len(self.seqlens), device=lens.device), lens)

    def block_diagonal(self, device: torch.device | str) -> torch.Tensor:
        """``[1, 1, T, T]`` boolean mask, True where query and key belong to the same sequence."""
        key = f"block_diagonal:{device}"
        if key not in self._cache:
            seg = self.segment_ids(device)
            self._cache[key] = (seg[:, None] == seg[None, :])[None, None]
        return self._cache[key]

    def xformers_bias(self) -> Any:
        """xformers ``BlockDiagonalMask`` of these lengths (built once per forward, reused by every layer)."""
        if "xformers" not in self._cache:
            from xformers.ops import fmha  # type: ignore[import-not-found]

            self._cache["xformers"] = fmha.attn_bias.BlockDiagonalMask.from_seqlens(list(self.seqlens))
        return self._cache["xformers"]


def _check_packed(query: torch.Tensor, attention_mask: torch.Tensor | None, packed: PackedSeqs) -> None:
    if query.shape[0] != 1 or query.shape[2] != packed.total:
        raise ValueError(f"packed attention: expected q of shape [1, H, {packed.total}, D], got {tuple(query.shape)}")
    if attention_mask is not None:
        raise ValueError("packed attention: a packed row has no padding; pass attention_mask=None")


def padding_bias(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias ``[B, H, Lq, Lk]`` from the boolean mask transformers builds (True = attend).

    xformers wants a float bias of the query dtype whose last dim is stored with a stride that is a multiple of
    8, hence the over-allocation and slice; the head dim is a stride-0 expand (no copy).
    """
    if attention_mask.dtype != torch.bool:  # an eager-style additive mask (0 / -inf) passes through
        bias = attention_mask.to(dtype)
        return bias.expand(bias.shape[0], num_heads, bias.shape[2], bias.shape[3])
    b, _, lq, lk = attention_mask.shape
    lk_pad = (lk + 7) // 8 * 8
    bias = torch.zeros(b, 1, lq, lk_pad, dtype=dtype, device=attention_mask.device)[..., :lk]
    bias.masked_fill_(~attention_mask, float("-inf"))
    return bias.expand(b, num_heads, lq, lk)


def _use_xformers_kernel(query: torch.Tensor) -> bool:
    """Whether to call the real kernel (a seam tests patch to drive the GPU branch with a stand-in kernel)."""
    return xops is not None and query.is_cuda


def xformers_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    packed: PackedSeqs | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Memory-efficient attention. q/k/v ``[B, H, L, D]``; returns ``([B, Lq, H, D], None)`` like HF's functions.
    With ``packed``, ``B == 1`` and attention stays inside each sequence (``BlockDiagonalMask``)."""
    p = dropout if module.training else 0.0
    bias: Any = None
    if packed is not None:
        _check_packed(query, attention_mask, packed)
        if _use_xformers_kernel(query):
            bias = packed.xformers_bias()
        else:
            attention_mask = packed.block_diagonal(query.device)  # emulation: the dense equivalent of the mask
    if bias is None and attention_mask is not None:
        bias = padding_bias(attention_mask, query.shape[1], query.dtype)
    if _use_xformers_kernel(query):
        out = xops.memory_efficient_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_bias=bias, p=p, scale=scaling
        )
        return out, None
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=p, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    packed: PackedSeqs | None = None,
    **kwargs,
) -> tuple[torch.Tensor, Any]:
    """transformers' SDPA on padded batches; on a packed row one SDPA call per sequence (no cross-sequence
    scores are computed, so the cost is ``sum len^2`` like the unpadded sequences')."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    _check_packed(query, attention_mask, packed)
    p = dropout if module.training else 0.0
    outs, start = [], 0
    for n in packed.seqlens:
        sl = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(query[:, :, sl], key[:, :, sl], value[:, :, sl], dropout_p=p,
                                                   scale=scaling))
        start += n
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def packed_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    packed: PackedSeqs | None = None,
    **kwargs,
) -> tuple[torch.Tensor, Any]:
    """transformers' eager attention; on a packed row the same maths with a dense block-diagonal bias."""
    from transformers.models.bert.modeling_bert import eager_attention_forward

    if packed is not None:
        _check_packed(query, attention_mask, packed)
        attention_mask = padding_bias(packed.block_diagonal(query.device), 1, query.dtype)
    return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                   **kwargs)


#: registered name of the packed-aware function for each backend; the towers are built with these
PACKED_AWARE = {"sdpa": "protclip_sdpa", "eager": "protclip_eager", "xformers": "xformers"}

_REGISTERED = False


def register_backends() -> None:
    """Register ``xformers`` and the packed-aware wrappers in both the attention and the mask interfaces, each
    with the mask function of the backend it wraps (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask, sdpa_mask

    AttentionInterface.register("xformers", xformers_attention)
    AttentionMaskInterface.register("xformers", sdpa_mask)  # without it padding is silently attended
    AttentionInterface.register(PACKED_AWARE["sdpa"], packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_AWARE["sdpa"], sdpa_mask)
    AttentionInterface.register(PACKED_AWARE["eager"], packed_eager_attention)
    AttentionMaskInterface.register(PACKED_AWARE["eager"], eager_mask)
    _REGISTERED = True


def packed_capable(name: str) -> bool:
    """Whether a tower built with attention implementation ``name`` honours the ``packed`` keyword."""
    return name in PACKED_AWARE.values()
