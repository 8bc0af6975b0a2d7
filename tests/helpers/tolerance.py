"""Float comparisons whose tolerance follows from the dtype and the magnitudes compared, never from one CPU.

Two computations of the same maths that differ only in reduction order (threads, SIMD width, gloo vs one process,
FSDP shards, micro-batches) agree to a few units of rounding of the *largest* value involved, not elementwise to
each entry's own size: a gradient entry near 0 can carry the rounding error of the large terms summed into it.
So the absolute tolerance is ``ulps * eps(dtype) * scale`` where ``scale`` is the max-abs of the reference tensor
(or a caller-given magnitude such as the norm of the inputs), and ``ulps`` is the rounding budget of the
computation's depth:

* ``ULPS_REDUCTION`` (64): one reduction chain (a matmul, a sum, an all-reduce) computed in another order;
* ``ULPS_NETWORK`` (1024): a forward + backward through a few transformer layers, or one optimizer step on top
  of such gradients (each layer re-rounds; softmax/LayerNorm amplify a little).

In fp32 these allow relative errors (to the tensor's max-abs) of 7.6e-6 and 1.2e-4. Exact maths (a formula
checked against a reference written from the method's formulas) is compared in float64, where the same budgets
are ~1e-14.
Python floats (metrics, losses read back from a tracker) go through :func:`approx_rounding`, a ``pytest.approx``
with the same budget for the dtype they were computed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

ULPS_REDUCTION = 64.0
ULPS_NETWORK = 1024.0


def eps_atol(scale: float, ulps: float = ULPS_REDUCTION, dtype: torch.dtype = torch.float32) -> float:
    """Absolute tolerance ``ulps * eps(dtype) * scale`` for values of magnitude ``scale`` (at least 1e-30)."""
    return ulps * torch.finfo(dtype).eps * max(scale, 1e-30)


def rounding_atol(reference: torch.Tensor, ulps: float = ULPS_REDUCTION, dtype: torch.dtype | None = None,
                  scale: float | None = None) -> float:
    """Absolute tolerance ``ulps * eps(dtype) * scale``; scale defaults to ``max|reference|`` (at least 1e-30)."""
    dtype = dtype or (reference.dtype if reference.is_floating_point() else torch.float32)
    if scale is None:
        scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
    return eps_atol(scale, ulps, dtype)


def _as_tensor(x: object) -> torch.Tensor:
    if isinstance(x, np.ndarray):  # a reversed view has negative strides, which torch cannot wrap
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x)


def assert_close_rounding(actual: torch.Tensor, expected: torch.Tensor, ulps: float = ULPS_REDUCTION,
                          dtype: torch.dtype | None = None, scale: float | None = None, msg: str = "") -> None:
    """``actual`` equals ``expected`` up to the rounding budget (see the module docstring)."""
    actual, expected = _as_tensor(actual), _as_tensor(expected)
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    atol = rounding_atol(expected, ulps, dtype, scale)
    diff = float((actual.detach().double() - expected.detach().double()).abs().max()) if expected.numel() else 0.0
    what = "the max-abs value" if scale is None else f"{scale:.3g}"
    assert diff <= atol, f"{msg}: max |diff| {diff:.3g} > {atol:.3g} ({ulps:g} ulps of {what})"


def approx_rounding(expected: float | Sequence[float], ulps: float = ULPS_REDUCTION,
                    dtype: torch.dtype = torch.float64, scale: float | None = None) -> object:
    """``pytest.approx(expected)`` within ``ulps * eps(dtype) * scale``; scale defaults to ``max|expected|``.

    For Python floats computed in ``dtype`` (float64 unless a float32 tensor produced them). Pass ``scale`` when
    ``expected`` can be near 0 while the terms that produced it are not.
    """
    if scale is None:
        values = torch.as_tensor(expected, dtype=torch.float64)
        scale = float(values.abs().max()) if values.numel() else 0.0
    return pytest.approx(expected, rel=0.0, abs=eps_atol(scale, ulps, dtype))
