"""Packed towers: a row of concatenated sequences gives each sequence its own unpadded forward.

Real UniProt rows of mixed lengths are collated, packed (``pack_batch``) and run through a tiny ESM-2 (rotary,
token dropout) and a tiny BERT (absolute positions) with each packed-aware attention backend on CPU; every
sequence's hidden states must equal the tower run on that sequence alone (fp32, the forward's rounding budget).
"""

from __future__ import annotations

import pytest
import torch

from protclip.data.collate import pack_batch
from protclip.model import attention
from protclip.model.attention import PackedSeqs
from protclip.model.config import tiny_model_config
from protclip.model.packed import packed_hidden
from protclip.model.towers import build_protein_tower, build_text_tower
from tests.helpers.model import row_batch, short_rows, tiny
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding

BACKENDS = ("sdpa", "eager", "xformers")


@pytest.fixture(scope="module")
def packed():
    """Short rows and cropped long rows (protein lengths 30..130), packed; the padded batch alongside."""
    _, _, col = tiny()
    rows = short_rows(3) + row_batch(3)
    batch = col(rows, seed=0)
    lens = batch["protein_attention_mask"].sum(1)
    assert len(set(lens.tolist())) >= 3 and (batch["mlm_input_ids"] == 32).any()  # mixed lengths, masked tokens
    return batch, pack_batch(batch)


def _alone(tower, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tower(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None]).last_hidden_state[0]


def _check_group(tower, padded_ids, padded_mask, p_ids, p_pos, p_cu, what: str) -> None:
    seqs = PackedSeqs.from_cu_seqlens(p_cu)
    with torch.no_grad():
        h = packed_hidden(tower, p_ids, p_pos, seqs)[0]
    for i, n in enumerate(seqs.seqlens):
        ids = padded_ids[i][padded_mask[i].bool()]
        assert n == len(ids)
        ref = _alone(tower, ids)
        got = h[int(p_cu[i]) : int(p_cu[i + 1])]
        assert_close_rounding(got, ref, ULPS_NETWORK, msg=f"{what} sequence {i} (length {n})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_esm_equals_each_sequence_alone(packed, backend):
    batch, p = packed
    torch.manual_seed(0)
    tower = build_protein_tower(tiny_model_config(attention=backend)).eval()
    am, pos, cu = batch["protein_attention_mask"], p["protein_position_ids"], p["protein_cu_seqlens"]
    _check_group(tower, batch["protein_input_ids"], am, p["protein_input_ids"], pos, cu, f"ESM {backend}")
    # MLM-masked input: ESM's token-dropout rescaling must count masked tokens per sequence, not per row
    _check_group(tower, batch["mlm_input_ids"], am, p["mlm_input_ids"], pos, cu, f"ESM {backend} masked")


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_bert_equals_each_sequence_alone(packed, backend):
    batch, p = packed
    torch.manual_seed(0)
    tower = build_text_tower(tiny_model_config(attention=backend)).eval()
    _check_group(tower, batch["text_input_ids"], batch["text_attention_mask"], p["text_input_ids"],
                 p["text_position_ids"], p["text_cu_seqlens"], f"BERT {backend}")
    b, k, ls = batch["subtext_input_ids"].shape
    _check_group(tower, batch["subtext_input_ids"].reshape(b * k, ls),
                 batch["subtext_attention_mask"].reshape(b * k, ls), p["subtext_input_ids"],
                 p["subtext_position_ids"], p["subtext_cu_seqlens"], f"BERT {backend} sub-texts")


def test_packing_layout(packed):
    batch, p = packed
    lens = batch["protein_attention_mask"].sum(1)
    assert p["protein_cu_seqlens"].tolist() == [0, *torch.cumsum(lens, 0).tolist()]
    assert p["protein_input_ids"].shape == (1, int(lens.sum()))
    starts = p["protein_cu_seqlens"][:-1]
    assert (p["protein_position_ids"][0, starts] == 0).all()  # positions restart at every sequence
    assert (p["protein_input_ids"][0, starts] == 0).all()  # and each sequence starts with <cls>
    assert p["subtext_cu_seqlens"].shape[0] == 4 * len(lens) + 1


def test_builtin_attention_refuses_packed_rows(packed):
    """transformers' own sdpa ignores the boundaries (attends across sequences): packed rows are refused."""
    _, p = packed
    torch.manual_seed(0)
    from transformers import EsmModel

    from protclip.model.towers import tiny_esm_config

    plain = EsmModel._from_config(tiny_esm_config(tiny_model_config().protein_random), attn_implementation="sdpa")
    seqs = PackedSeqs.from_cu_seqlens(p["protein_cu_seqlens"])
    with pytest.raises(ValueError, match="attend across sequences"):
        packed_hidden(plain, p["protein_input_ids"], p["protein_position_ids"], seqs)


def test_xformers_kernel_on_cuda(packed):
    if not attention.xformers_available():
        reason = (f"needs CUDA and xformers (this machine: cuda={torch.cuda.is_available()}, "
                  f"xformers={attention.xops is not None})")
        print(f"SKIPPED xformers BlockDiagonalMask test: {reason}")
        pytest.skip(reason)
    batch, p = packed
    torch.manual_seed(0)
    tower = build_protein_tower(tiny_model_config(attention="xformers")).eval().cuda()
    dev = {k: v.cuda() for k, v in p.items()}
    seqs = PackedSeqs.from_cu_seqlens(dev["protein_cu_seqlens"])
    with torch.no_grad():
        h = packed_hidden(tower, dev["protein_input_ids"], dev["protein_position_ids"], seqs)[0].cpu()
    tower = tower.cpu()
    for i, n in enumerate(seqs.seqlens):
        ids = batch["protein_input_ids"][i][: n]
        ref = _alone(tower, ids)
        # the GPU kernel re-rounds differently from the CPU reference: the forward's rounding budget
        assert_close_rounding(h[int(p["protein_cu_seqlens"][i]) : int(p["protein_cu_seqlens"][i + 1])], ref,
                              ULPS_NETWORK, msg=f"xformers sequence {i}")


class _StandInBlockDiagonalMask:
    """xformers ``fmha.attn_bias.BlockDiagonalMask`` stand-in: its lengths and ``materialize`` (the additive bias
    it stands for, built here by loops over the blocks, independently of the code under test)."""

    built: list[tuple[int, ...]] = []

    def __init__(self, seqlens: list[int]) -> None:
        self.seqlens = tuple(seqlens)

    @classmethod
    def from_seqlens(cls, seqlens: list[int]) -> _StandInBlockDiagonalMask:
        cls.built.append(tuple(seqlens))
        return cls(seqlens)

    def materialize(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        bias = torch.full(shape, float("-inf"), dtype=dtype, device=device)
        start = 0
        for n in self.seqlens:
            bias[..., start : start + n, start : start + n] = 0.0
            start += n
        return bias


@pytest.mark.parametrize("group", ["protein", "text"])
def test_packed_xformers_branch_with_stand_in_kernel(packed, group, monkeypatch):
    """Drive the packed xformers branch (BlockDiagonalMask from the sequence lengths, built once per forward and
    reused by every layer; q/k/v as one ``[1, T, H, D]`` row; the tower's scale) with a reference kernel in
    xformers' API: each sequence must equal its own forward (computed first, on the CPU emulation)."""
    import sys
    import types

    batch, p = packed
    torch.manual_seed(0)
    cfg = tiny_model_config(attention="xformers")
    tower = (build_protein_tower(cfg) if group == "protein" else build_text_tower(cfg)).eval()
    seqs = PackedSeqs.from_cu_seqlens(p[f"{group}_cu_seqlens"])
    ids, am = batch[f"{group}_input_ids"], batch[f"{group}_attention_mask"]
    refs = [_alone(tower, ids[i][am[i].bool()]) for i in range(len(seqs.seqlens))]

    calls: list[tuple[int, ...]] = []

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
        assert isinstance(attn_bias, _StandInBlockDiagonalMask)  # not the dense emulation mask
        b, t, h, d = q.shape
        assert b == 1 and t == sum(attn_bias.seqlens) and k.shape == v.shape == q.shape
        calls.append(attn_bias.seqlens)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) * (d**-0.5 if scale is None else scale)
        s = s + attn_bias.materialize((b, h, t, t), dtype=q.dtype, device=q.device)
        return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)

    fmha = types.SimpleNamespace(attn_bias=types.SimpleNamespace(BlockDiagonalMask=_StandInBlockDiagonalMask))
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", types.SimpleNamespace(fmha=fmha))
    monkeypatch.setattr(attention, "xops", types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention))
    monkeypatch.setattr(attention, "_use_xformers_kernel", lambda q: True)
    monkeypatch.setattr(_StandInBlockDiagonalMask, "built", [])
    with torch.no_grad():
        h = packed_hidden(tower, p[f"{group}_input_ids"], p[f"{group}_position_ids"], seqs)[0]
    assert _StandInBlockDiagonalMask.built == [seqs.seqlens]  # one mask per forward, from the real lengths
    assert calls == [seqs.seqlens] * tower.config.num_hidden_layers
    cu = p[f"{group}_cu_seqlens"]
    for i, ref in enumerate(refs):
        assert_close_rounding(h[int(cu[i]) : int(cu[i + 1])], ref, ULPS_NETWORK, msg=f"{group} sequence {i}")
