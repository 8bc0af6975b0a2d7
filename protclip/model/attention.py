"""Attention backends for both towers, plugged in through transformers' attention interface.

``xformers`` is registered as a custom attention function. Three traps of transformers 5.23 (stack.md §3):
1. the name must also be registered in ``AttentionMaskInterface``, or the padding mask is silently dropped;
2. ESM pre-scales the query and passes ``scaling=1.0``, so the scale must be forwarded, not defaulted;
3. ``_from_config(cfg, attn_implementation=...)`` writes into ``cfg``: configs are deep-copied by the caller.

Without xformers or off CUDA the function emulates the kernel with torch SDPA, but through the *same*
additive-bias construction the GPU path feeds xformers, so the padding logic is exercised in CPU tests.
"""

from __future__ import annotations

import logging

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
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Memory-efficient attention. q/k/v ``[B, H, L, D]``; returns ``([B, Lq, H, D], None)`` like HF's functions."""
    p = dropout if module.training else 0.0
    bias = None
    if attention_mask is not None:
        bias = padding_bias(attention_mask, query.shape[1], query.dtype)
    if _use_xformers_kernel(query):
        out = xops.memory_efficient_attention(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_bias=bias,
            p=p,
            scale=scaling,
        )
        return out, None
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=p, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


_REGISTERED = False


def register_backends() -> None:
    """Register ``xformers`` in both the attention and the mask interfaces (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register("xformers", xformers_attention)
    AttentionMaskInterface.register("xformers", sdpa_mask)  # without it padding is silently attended
    _REGISTERED = True
