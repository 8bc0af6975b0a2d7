"""Loss functions in isolation: PDA, GC, MLM/BSR and the weighted total."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from protclip.data.config import DataConfig
from protclip.model.config import LossConfig, ModelConfig
from protclip.model.losses import (
    GatheredFeatures,
    ProtCLIPLoss,
    global_contrastive_loss,
    mlm_loss,
    pda_loss,
    pda_segments,
)
from protclip.model.losses.pda import pda_logits
from tests.helpers.model import ref_pda
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding


def close64(actual, expected, msg=""):
    """A float32 PDA computation against the float64 PDA reference (tests/helpers/model.py; a few reductions, a
    division by the min-max range, a normalisation: the few-layer rounding budget)."""
    assert_close_rounding(actual, expected, ULPS_NETWORK, dtype=torch.float32, msg=msg)


# ------------------------------------------------------------------------------------------------ PDA
def random_pda_inputs(b=3, length=20, d=8, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, length, d, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 15:] = False
    mask[:, 0] = False
    queries = torch.randn(b, k, d, generator=g)
    return tokens, mask, queries, torch.tensor([10.0])


def test_pda_permuting_properties_permutes_logits():
    tokens, mask, queries, scale = random_pda_inputs()
    perm = torch.tensor([2, 0, 3, 1])
    seg, w = pda_segments(tokens, mask, queries)
    # the weights and logits themselves are the method's: min-max over the masked tokens, cut at 0.3, renormalised
    ref = ref_pda(tokens, mask, queries, scale=10.0)
    assert ref["theta_margin"] > 1e-5  # no score sits on theta, so float32 and float64 cut the same tokens
    close64(w, ref["weights"], "PDA weights")
    close64(seg, ref["segments"], "PDA segments")
    close64(pda_logits(seg, queries, scale), ref["logits"], "PDA logits")
    # ... and this input exercises both steps: raw scores fall outside [0, 1], and the cut drops real residues
    s_raw = torch.einsum("bkd,bld->bkl", queries, tokens)[mask[:, None, :].expand(-1, 4, -1)]
    assert s_raw.min() < -1 and s_raw.max() > 1
    cut = (w == 0) & mask[:, None, :]
    assert cut.sum(-1).min() >= 1 and (w > 0).sum(-1).min() >= 1
    for sym in (True, False):
        want = (ref["e2q"] + ref["q2e"]) / 2 if sym else ref["e2q"]
        close64(
            pda_loss(tokens, mask, queries, scale, symmetric=sym)["loss_pda"], want, f"loss symmetric={sym}"
        )
    seg_p, w_p = pda_segments(tokens, mask, queries[:, perm])
    torch.testing.assert_close(w_p, w[:, perm])
    logits, logits_p = pda_logits(seg, queries, scale), pda_logits(seg_p, queries[:, perm], scale)
    torch.testing.assert_close(logits_p, logits[:, perm][:, :, perm])
    for sym in (True, False):
        torch.testing.assert_close(
            pda_loss(tokens, mask, queries[:, perm], scale, symmetric=sym)["loss_pda"],
            pda_loss(tokens, mask, queries, scale, symmetric=sym)["loss_pda"],
        )


def test_pda_segment_pools_the_residues_that_match_its_property():
    """Residues 1-3 point along property 0, 4-6 along 1, 7-9 along 2, 10-12 along 3 (token 0 = <cls>)."""
    d, k = 6, 4
    basis = torch.eye(d)[:k]
    tokens = torch.zeros(1, 16, d)
    for p in range(k):
        tokens[0, 1 + 3 * p : 4 + 3 * p] = basis[p] * torch.tensor([0.5, 2.0, 3.0])[:, None]
    tokens[0, 0] = basis[0] * 50  # <cls>: excluded by the mask although it matches property 0 best
    tokens[0, 13:] = basis[1] * 50  # padding: excluded too
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 1:13] = True
    seg, w = pda_segments(tokens, mask, basis[None], threshold=0.3)
    for p in range(k):
        own = slice(1 + 3 * p, 4 + 3 * p)
        assert torch.allclose(w[0, p].sum(), torch.tensor(1.0))
        # own scores 0.5, 2, 3 (0 elsewhere) -> min-max 1/6, 2/3, 1 -> the 1/6 residue is cut by theta = 0.3
        torch.testing.assert_close(w[0, p, own], torch.tensor([0.0, 0.4, 0.6]))
        assert w[0, p, ~torch.isin(torch.arange(16), torch.arange(16)[own])].sum() == 0
        assert F.cosine_similarity(seg[0, p], basis[p], dim=0) > 0.999
    logits = pda_logits(seg, basis[None], torch.tensor([10.0]))
    assert (logits[0].argmax(-1) == torch.arange(k)).all()
    # released mode pools over every position: the padding that matches property 1 takes over its segment
    _, w_all = pda_segments(tokens, torch.ones_like(mask), basis[None])
    assert w_all[0, 1, 13:].sum() > 0.9 and w_all[0, 0, 0] > 0.9


def test_pda_released_direction_is_repeated():
    tokens, mask, queries, scale = random_pda_inputs(seed=3)
    seg, _ = pda_segments(tokens, mask, queries)
    logits = pda_logits(seg, queries, scale)
    labels = torch.arange(4).repeat(3)
    e2q = F.cross_entropy(logits.reshape(12, 4), labels)
    q2e = F.cross_entropy(logits.transpose(1, 2).reshape(12, 4), labels)
    torch.testing.assert_close(pda_loss(tokens, mask, queries, scale, symmetric=False)["loss_pda"], e2q)
    torch.testing.assert_close(
        pda_loss(tokens, mask, queries, scale, symmetric=True)["loss_pda"], (e2q + q2e) / 2
    )
    # the same against the float64 reference, whose two directions differ clearly on this input
    ref = ref_pda(tokens, mask, queries, scale=10.0)
    assert ref["theta_margin"] > 1e-5 and abs(float(ref["e2q"] - ref["q2e"])) > 1e-2
    close64(pda_loss(tokens, mask, queries, scale, symmetric=False)["loss_pda"], ref["e2q"], "released PDA")
    close64(pda_loss(tokens, mask, queries, scale, symmetric=True)["loss_pda"], (ref["e2q"] + ref["q2e"]) / 2,
            "paper PDA")  # fmt: skip


# ------------------------------------------------------------------------------------------------ GC
def reference_clip(p, t, scale):
    logits = scale * p @ t.t()
    labels = torch.arange(len(p))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def test_gc_single_process_matches_reference_and_uses_fp32():
    g = torch.Generator().manual_seed(0)
    p = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    t = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    scale = torch.tensor([1 / 0.07])
    out = global_contrastive_loss(p, t, scale)
    torch.testing.assert_close(out["loss_gc"], reference_clip(p, t, scale[0]))
    out16 = global_contrastive_loss(p.bfloat16(), t.bfloat16(), scale)
    assert out16["loss_gc"].dtype == torch.float32


def test_gc_injected_gather_scores_local_rows_against_all_columns():
    g = torch.Generator().manual_seed(1)
    p_all = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    t_all = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    scale = torch.tensor([5.0])
    full = reference_clip(p_all, t_all, scale[0])
    parts = []
    for r in range(2):  # what two ranks compute; their mean is the global loss
        rows = slice(4 * r, 4 * r + 4)

        def gather(p, t, rows=rows, r=r):
            return GatheredFeatures(p, t, p_all, t_all, 4 * r)

        parts.append(global_contrastive_loss(p_all[rows], t_all[rows], scale, gather)["loss_gc"])
    torch.testing.assert_close((parts[0] + parts[1]) / 2, full)


# ------------------------------------------------------------------------------------------------ total
def fake_out(b=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, requires_grad=True)  # noqa: E731
    return {
        "protein_features": F.normalize(r(b, d), dim=-1), "text_features": F.normalize(r(b, d), dim=-1),
        "logit_scale": torch.tensor([14.0]), "local_logit_scale": torch.tensor([10.0]),
        "mlm_logits": r(10, 33), "mlm_labels": torch.randint(4, 24, (10,), generator=g),
        "bsr_logits": r(7, 33), "bsr_labels": torch.randint(4, 24, (7,), generator=g),
        "pda_tokens": r(b, 12, d), "pda_token_mask": torch.ones(b, 12, dtype=torch.bool), "pda_queries": r(b, 4, d),
    }  # fmt: skip


def test_total_is_the_weighted_sum_and_terms_switch_off():
    out = fake_out()
    terms = ProtCLIPLoss(LossConfig(), ModelConfig())(out)
    expected = terms["loss_gc"] + 0.7 * terms["loss_bsr"] + 0.3 * terms["loss_mlm"] + 1.0 * terms["loss_pda"]
    torch.testing.assert_close(terms["loss"], expected)
    lc = LossConfig(bsr=False, pda=False, lambda_mlm=0.5)
    terms = ProtCLIPLoss(lc, ModelConfig())(out)
    assert "loss_bsr" not in terms and "loss_pda" not in terms
    torch.testing.assert_close(terms["loss"], terms["loss_gc"] + 0.5 * terms["loss_mlm"])


def test_empty_token_selection_gives_zero_with_graph():
    logits = torch.randn(0, 33, requires_grad=True)
    out = mlm_loss(logits, torch.zeros(0, dtype=torch.long))
    assert out["loss_mlm"].item() == 0.0 and out["loss_mlm"].requires_grad


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        ModelConfig(mode="faithful")
    with pytest.raises(ValueError, match="pda_threshold"):
        ModelConfig(pda_threshold=1.5)
    with pytest.raises(ValueError, match="span_min"):
        LossConfig(span_min=11, span_max=10)
    with pytest.raises(ValueError, match="at least one"):
        LossConfig(gc=False, mlm=False, bsr=False, pda=False)
    assert math.isclose(DataConfig().max_residues, 1022)
