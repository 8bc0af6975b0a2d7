"""Attention backends: sdpa and the xformers function equal eager on padded batches, for both towers."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import AttentionInterface

from protclip.model import attention
from protclip.model.config import tiny_model_config
from protclip.model.towers import build_protein_tower, build_text_tower
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding


def padded_protein_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = [12, 17, 24, 5]
    ids = torch.full((len(lengths), max(lengths)), 1)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, 1 : n - 1], ids[i, n - 1] = 0, torch.randint(4, 24, (n - 2,), generator=g), 2
    return ids, (ids != 1).long()


def padded_text_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = [9, 15, 4]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, 1 : n - 1], ids[i, n - 1] = 2, torch.randint(5, vocab, (n - 2,), generator=g), 3
    return ids, (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()


@pytest.fixture(scope="module")
def towers():
    torch.manual_seed(0)
    cfg = tiny_model_config(attention="eager")
    return build_protein_tower(cfg).eval(), build_text_tower(cfg).eval()


def hidden_vs_eager(model, ids, am, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states of the real (unpadded) tokens under ``impl`` and under eager."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=am).last_hidden_state
        model.set_attn_implementation(impl)
        out = model(input_ids=ids, attention_mask=am).last_hidden_state
    model.set_attn_implementation("eager")
    return out[am.bool()], ref[am.bool()]


def assert_equals_eager(model, ids, am, impl: str) -> None:
    # another attention kernel re-rounds every layer's softmax and matmuls: the forward's rounding budget
    assert_close_rounding(*hidden_vs_eager(model, ids, am, impl), ULPS_NETWORK, msg=f"{impl} vs eager")


def max_diff_vs_eager(model, ids, am, impl: str) -> float:
    out, ref = hidden_vs_eager(model, ids, am, impl)
    return (out - ref).abs().max().item()


@pytest.mark.parametrize("impl", ["sdpa", "xformers"])
def test_backend_equals_eager_on_padded_batches(towers, impl):
    protein, text = towers
    assert not attention.xformers_available()  # CPU: "xformers" is the emulation through padding_bias + SDPA
    assert_equals_eager(protein, *padded_protein_batch(), impl)
    assert_equals_eager(text, *padded_text_batch(text.config.vocab_size), impl)


def test_emulation_goes_through_padding_bias(towers, monkeypatch):
    protein, _ = towers
    calls = []
    real = attention.padding_bias
    monkeypatch.setattr(attention, "padding_bias", lambda *a, **k: calls.append(1) or real(*a, **k))
    max_diff_vs_eager(protein, *padded_protein_batch(), "xformers")
    assert len(calls) == protein.config.num_hidden_layers


def test_without_mask_registration_padding_leaks(towers):
    """Registering the function but not its mask interface (trap 1 in protclip/model/attention.py) silently
    drops the mask."""
    protein, text = towers
    AttentionInterface.register("xformers_nomask_test", attention.xformers_attention)
    assert max_diff_vs_eager(protein, *padded_protein_batch(), "xformers_nomask_test") > 1e-2
    assert max_diff_vs_eager(text, *padded_text_batch(text.config.vocab_size), "xformers_nomask_test") > 1e-3


def test_gpu_branch_with_stand_in_kernel(towers, monkeypatch):
    """Drive the xformers branch (layout [B, L, H, D], bias, scale) with a reference kernel in xformers' API."""

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
        assert q.dim() == 4 and (
            attn_bias is None or attn_bias.shape == (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        )
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
        if attn_bias is not None:
            s = s + attn_bias
        return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)

    monkeypatch.setattr(
        attention, "xops", types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    )
    monkeypatch.setattr(attention, "_use_xformers_kernel", lambda q: True)
    protein, text = towers
    assert_equals_eager(protein, *padded_protein_batch(), "xformers")
    assert_equals_eager(text, *padded_text_batch(text.config.vocab_size), "xformers")


def test_padding_bias_layout():
    mask = torch.ones(2, 1, 5, 11, dtype=torch.bool)
    mask[1, :, :, 7:] = False
    bias = attention.padding_bias(mask, num_heads=3, dtype=torch.float32)
    assert bias.shape == (2, 3, 5, 11) and bias.stride(1) == 0 and bias.stride(-2) % 8 == 0
    assert torch.isneginf(bias[1, :, :, 7:]).all() and (bias[1, :, :, :7] == 0).all() and (bias[0] == 0).all()


def test_backend_resolution_and_config_isolation():
    assert attention.resolve_backend("auto", "cpu") == "sdpa"
    assert attention.resolve_backend("eager") == "eager"
    with pytest.raises(ValueError, match="attention backend"):
        attention.resolve_backend("flash")
    cfg = tiny_model_config(attention="eager")
    a = build_protein_tower(cfg)
    b = build_protein_tower(cfg, attn_implementation="xformers")
    assert a.config is not b.config  # trap 3 in protclip/model/attention.py: one shared config would switch both
    # the towers get the packed-aware wrappers (transformers' own function on padded batches)
    assert (a.config._attn_implementation, b.config._attn_implementation) == ("protclip_eager", "xformers")
