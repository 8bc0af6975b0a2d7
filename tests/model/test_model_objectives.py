"""The lines that make ``paper`` mode differ from ``released`` mode, pinned through the public model and loss.

``build_model(cfg)(batch)`` -> ``ProtCLIPLoss`` is checked in both modes against
- a reference written from ProtCLIP's formulas in float64 (tests/helpers/model.py ``ref_forward``/``ref_terms``,
  with the method's constants written there: temperatures 0.07 / 0.1, theta 0.3, prototype tau 0.9),
- invariance to padding columns (paper) and its failure, exactly as the released code's plain means and
  unmasked protein-axis softmax give (released),
- values computed by hand on a 2-protein toy batch run through stand-in towers whose hidden states are fixed
  vectors per token id.

Randomness is controlled: models run in eval mode (no Gumbel noise in the prototype bank; the frozen text tower
has no dropout, the tiny ESM none), a batch is collated once and padded by hand, so both versions share masks.
Float comparisons: fp32 model outputs against float64 references, with the rounding budget of a few layers of
heads (``ULPS_NETWORK`` of the reference's max-abs, tests/helpers/tolerance.py).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from protclip.data.tokenizers import ESM_CLS, ESM_EOS, ESM_MASK, ESM_PAD
from protclip.model.config import LossConfig, ModelConfig, tiny_model_config
from protclip.model.losses import ProtCLIPLoss
from protclip.model.protclip import ProtCLIPModel
from tests.helpers.model import (
    pad_columns,
    ref_clip_loss,
    ref_forward,
    ref_pda,
    ref_residue_mask,
    ref_terms,
    short_rows,
    tiny,
)
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding, rounding_atol

MODES = ("paper", "released")
FEATURES = ("protein_features", "text_features", "mlm_logits", "bsr_logits", "pda_queries", "pda_tokens")
TERMS = ("loss_gc", "loss_mlm", "loss_bsr", "loss_pda", "loss")
#: hand padding added to a collated batch: protein, text, sub-text columns
EXTRA = {"protein": 40, "text": 16, "subtext": 8}


def close(actual, expected, msg: str, scale: float | None = None) -> None:
    """fp32 result vs float64 reference: the rounding budget of a few layers in float32."""
    assert_close_rounding(actual, expected, ULPS_NETWORK, dtype=torch.float32, scale=scale, msg=msg)


def differs(a, b, msg: str) -> None:
    """Far outside the fp32 budget ``close`` allows (at least 10x), so a change is not a rounding effect."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    diff = float((a - b).abs().max())
    atol = rounding_atol(b, ULPS_NETWORK, torch.float32)
    assert diff > 10 * atol, f"{msg}: max |diff| {diff:.3g} is within 10x the rounding budget {atol:.3g}"


def run(model, loss_fn, batch):
    with torch.no_grad():
        out = model(batch)
        return out, loss_fn(out)


@pytest.fixture(scope="module")
def setups():
    """Per mode: an eval-mode tiny model, its loss, and one collated batch of short real rows (protein, text
    and sub-text padding all present)."""
    rows = short_rows(4)
    res = {}
    for mode in MODES:
        model, loss_fn, col = tiny(mode)
        model.eval()
        batch = col(rows, seed=0)
        am, tam = batch["protein_attention_mask"], batch["text_attention_mask"]
        assert (am == 0).any() and (tam == 0).any() and (batch["subtext_attention_mask"] == 0).any()
        res[mode] = SimpleNamespace(
            model=model, loss_fn=loss_fn, batch=batch, text_pad=col.text_tokenizer.pad_token_id
        )
    return res


def padded(s) -> dict[str, torch.Tensor]:
    return pad_columns(s.batch, text_pad_id=s.text_pad, **EXTRA)


# ------------------------------------------------------------------------------------------------ temperatures
@pytest.mark.parametrize("mode", MODES)
def test_initial_temperatures_are_0_07_for_gc_and_0_1_for_pda(mode, setups):
    assert ModelConfig().temperature_init == 0.07 and ModelConfig().local_temperature_init == 0.1
    s = setups[mode]
    model = s.model  # freshly built by build_model(tiny_model_config(mode)), never trained
    # the learnable log-scales, float32 parameters: ln(1/0.07) and ln(1/0.1) to float32 rounding
    assert_close_rounding(model.logit_scale.detach(), torch.tensor([math.log(1 / 0.07)], dtype=torch.float64),
                          ulps=2, dtype=torch.float32, msg="GC log-scale at init")  # fmt: skip
    assert_close_rounding(model.local_logit_scale.detach(), torch.tensor([math.log(1 / 0.1)], dtype=torch.float64),
                          ulps=2, dtype=torch.float32, msg="PDA log-scale at init")  # fmt: skip
    out, terms = run(s.model, s.loss_fn, s.batch)
    close(out["logit_scale"], torch.tensor([1 / 0.07], dtype=torch.float64), "GC multiplier")
    close(out["local_logit_scale"], torch.tensor([1 / 0.1], dtype=torch.float64), "PDA multiplier")
    close(terms["logit_scale"], torch.tensor(1 / 0.07, dtype=torch.float64), "GC multiplier used by the loss")
    close(
        terms["pda_logit_scale"], torch.tensor(10.0, dtype=torch.float64), "PDA multiplier used by the loss"
    )
    # the GC term uses it: the loss at s = 1/0.07 from the model's own features, not at another temperature
    p, t = out["protein_features"], out["text_features"]
    close(terms["loss_gc"], ref_clip_loss(p, t, 1 / 0.07), "loss_gc at temperature 0.07")
    differs(ref_clip_loss(p, t, 1 / 0.1), ref_clip_loss(p, t, 1 / 0.07), "GC temperature 0.1 vs 0.07 (check)")


# ------------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("pad", [False, True], ids=["collated", "extra_padding"])
@pytest.mark.parametrize("mode", MODES)
def test_features_and_terms_match_the_method_reference(mode, pad, setups):
    """Every feature and loss term equals the float64 reference of the method's formulas for the mode, with or
    without extra padding."""
    s = setups[mode]
    batch = padded(s) if pad else s.batch
    out, terms = run(s.model, s.loss_fn, batch)
    ref = ref_forward(s.model, batch, mode)
    rterms = ref_terms(ref, mode)
    assert rterms["pda_theta_margin"] > 1e-5, "a PDA score sits on theta: the comparison would be meaningless"
    for key in FEATURES:
        close(out[key], ref[key], f"{mode}: {key}")
    assert torch.equal(out["pda_token_mask"], ref["pda_token_mask"]), f"{mode}: PDA token mask"
    for key in TERMS:
        close(terms[key], rterms[key], f"{mode}: {key}")


@pytest.mark.parametrize("mode", MODES)
def test_encoders_pool_as_the_mode_says(mode, setups):
    """``encode_protein``/``encode_text`` (the eval embedders) against the reference pooling, not the model's."""
    s = setups[mode]
    ref = ref_forward(s.model, s.batch, mode)
    with torch.no_grad():
        zp = s.model.encode_protein(s.batch["protein_input_ids"], s.batch["protein_attention_mask"])
        zt = s.model.encode_text(s.batch["text_input_ids"], s.batch["text_attention_mask"])
    close(zp, ref["protein_features"], f"{mode}: encode_protein")
    close(zt, ref["text_features"], f"{mode}: encode_text")


# ------------------------------------------------------------------------------------------------ padding
def test_paper_mode_ignores_padding_columns(setups):
    """Extra protein, text and sub-text padding changes no feature and no loss term in paper mode."""
    s = setups["paper"]
    out0, terms0 = run(s.model, s.loss_fn, s.batch)
    out1, terms1 = run(s.model, s.loss_fn, padded(s))
    lp = s.batch["protein_input_ids"].shape[1]
    assert out1["pda_tokens"].shape[1] == lp + EXTRA["protein"]
    assert not out1["pda_token_mask"][:, lp:].any(), "padding columns enter PDA segments"
    for key in ("protein_features", "text_features", "mlm_logits", "bsr_logits", "pda_queries"):
        close(out1[key], out0[key].double(), f"paper: {key} with extra padding")
    close(out1["pda_tokens"][:, :lp], out0["pda_tokens"].double(), "paper: pda_tokens with extra padding")
    for key in TERMS:
        close(terms1[key], terms0[key].double(), f"paper: {key} with extra padding")


def test_released_mode_padding_changes_the_quirky_terms(setups):
    """Released mode means over every position (GC, sub-texts), normalises the decoder over the protein axis
    without a text mask, and pools PDA over every position: padding columns change all of those (the exact
    values are the released reference's, ``test_features_and_terms_match_the_method_reference``); MLM is
    untouched by padding in both modes."""
    s = setups["released"]
    out0, terms0 = run(s.model, s.loss_fn, s.batch)
    out1, terms1 = run(s.model, s.loss_fn, padded(s))
    for key in ("protein_features", "text_features", "bsr_logits", "pda_queries"):
        differs(out1[key], out0[key], f"released: {key} with extra padding")
    for key in ("loss_gc", "loss_bsr", "loss"):
        differs(terms1[key], terms0[key], f"released: {key} with extra padding")
    assert out1["pda_token_mask"].all(), "released PDA pools every position, padding included"
    close(out1["mlm_logits"], out0["mlm_logits"].double(), "released: mlm_logits with extra padding")
    close(terms1["loss_mlm"], terms0["loss_mlm"].double(), "released: loss_mlm with extra padding")


# ------------------------------------------------------------------------------------------------ PDA
@pytest.mark.parametrize("mode", MODES)
def test_pda_pools_only_real_residues_in_paper_mode(mode, setups):
    """Replacing the projected tokens at <cls>/<eos>/padding by huge vectors leaves L_PDA unchanged in paper
    mode (they never enter min-max, the theta cut or the pooling) and changes it in released mode."""
    s = setups[mode]
    batch = padded(s)
    out, terms = run(s.model, s.loss_fn, batch)
    ids = batch["protein_input_ids"]
    excluded = ~ref_residue_mask(ids, batch["protein_attention_mask"])
    assert (
        (ids[excluded] == ESM_CLS).any()
        and (ids[excluded] == ESM_EOS).any()
        and (ids[excluded] == ESM_PAD).any()
    )
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        tokens = out["pda_tokens"].clone()
        scale = float(tokens.abs().max())
        tokens[excluded] = 100 * scale * torch.randn(int(excluded.sum()), tokens.shape[-1], generator=g)
        got = s.loss_fn(dict(out, pda_tokens=tokens))["loss_pda"]
        if mode == "paper":
            close(got, terms["loss_pda"].double(), "paper: loss_pda with huge special/pad tokens")
        else:
            differs(got, terms["loss_pda"], "released: loss_pda with huge special/pad tokens")


@pytest.mark.parametrize("mode", MODES)
def test_pda_direction_is_wired_from_model_mode(mode, setups):
    """paper: ½[CE(e->q) + CE(q->e)]; released: the e->q direction repeated."""
    s = setups[mode]
    out, terms = run(s.model, s.loss_fn, s.batch)
    pda = ref_pda(out["pda_tokens"], out["pda_token_mask"], out["pda_queries"])
    assert pda["theta_margin"] > 1e-5
    differs(pda["q2e"], pda["e2q"], "the two directions differ on this batch (check)")
    want = (pda["e2q"] + pda["q2e"]) / 2 if mode == "paper" else pda["e2q"]
    close(terms["loss_pda"], want, f"{mode}: loss_pda direction")


# ------------------------------------------------------------------------------------------------ toy batch
class TableTower(nn.Module):
    """Stand-in tower: the hidden state at a position is a fixed vector per token id."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.config = SimpleNamespace(hidden_size=table.shape[1])

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(last_hidden_state=self.table[input_ids])


def table_rows(n: int, rows: dict[int, list[float]]) -> torch.Tensor:
    t = torch.zeros(n, 4)
    for i, v in rows.items():
        t[i] = torch.tensor(v)
    return t


L, A, G = 4, 5, 6  # ESM ids of three residues
CLS, SEP, W1, W2 = 2, 3, 5, 6  # BERT ids in the toy text vocabulary; 0 is [PAD]


def toy_model(mode: str) -> tuple[ProtCLIPModel, ProtCLIPLoss]:
    """Identity projections and value map, zero decoder queries, so every quantity is a plain mean."""
    cfg = tiny_model_config(mode=mode, projection_dim=4, proto_num=3)
    protein = table_rows(33, {ESM_CLS: [0, 0, 0, 1], ESM_EOS: [0, 0, 0, 1], ESM_PAD: [0, 0, 0, 3],
                                L: [1, 0, 0, 0], A: [0, 1, 0, 0], G: [0, 0, 1, 0]})  # fmt: skip
    text = table_rows(
        8, {0: [0, 0, 2, 2], CLS: [0, 0, 0, 1], SEP: [0, 0, 0, 1], W1: [1, 0, 0, 0], W2: [0, 1, 0, 0]}
    )
    torch.manual_seed(0)
    model = ProtCLIPModel(cfg, LossConfig(), protein_tower=TableTower(protein), text_tower=TableTower(text))
    with torch.no_grad():
        for lin in (model.protein_proj[0], model.protein_proj[2], model.text_proj[0], model.text_proj[2],
                    model.decoder.value):  # fmt: skip
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
        model.decoder.query.weight.zero_()
        model.decoder.query.bias.zero_()
    return model.eval(), ProtCLIPLoss(LossConfig(), cfg)


def toy_batch() -> dict[str, torch.Tensor]:
    """Proteins LAG and LA (one padding column); texts [CLS] w1 w2 [SEP] and [CLS] w1 [SEP] [PAD]."""
    ids = torch.tensor([[ESM_CLS, L, A, G, ESM_EOS], [ESM_CLS, L, A, ESM_EOS, ESM_PAD]])
    am = (ids != ESM_PAD).long()
    span_labels = torch.full_like(ids, -100)
    for b, p in ((0, 1), (0, 3), (1, 2)):
        span_labels[b, p] = ids[b, p]
    mlm_labels = torch.full_like(ids, -100)
    mlm_labels[0, 2] = A
    sub = torch.tensor([[[CLS, W1, SEP], [CLS, W2, 0], [CLS, W1, W2], [CLS, SEP, 0]],
                        [[CLS, W2, SEP], [CLS, W1, 0], [CLS, 0, 0], [CLS, W2, W1]]])  # fmt: skip
    sub_am = (sub != 0).long()
    text = torch.tensor([[CLS, W1, W2, SEP], [CLS, W1, SEP, 0]])
    return {
        "protein_input_ids": ids, "protein_attention_mask": am,
        "mlm_input_ids": torch.where(mlm_labels != -100, ESM_MASK, ids), "mlm_labels": mlm_labels,
        "span_input_ids": torch.where(span_labels != -100, ESM_MASK, ids), "span_labels": span_labels,
        "text_input_ids": text, "text_attention_mask": (text != 0).long(),
        "subtext_input_ids": sub, "subtext_attention_mask": sub_am, "property_present": torch.ones(2, 4, dtype=torch.long),
    }  # fmt: skip


def unit(*v: float) -> torch.Tensor:
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm()


# Hand-computed means of the toy batch (tables above; projections are the identity):
#   paper    protein: mean of residues only         LAG -> (1,1,1,0)/3          LA -> (1,1,0,0)/2
#            text:    mean of attended tokens       t1 -> (1,1,0,2)/4           t2 -> (1,0,0,2)/3
#   released protein: mean of all 5 positions       LAG -> (1,1,1,2)/5          LA -> (1,1,0,1+1+3)/5
#            text:    mean of all 4 positions       t1 -> (1,1,0,2)/4           t2 -> (1,0,2,1+1+2)/4
TOY = {
    "paper": {"protein": [unit(1, 1, 1, 0), unit(1, 1, 0, 0)], "text": [unit(1, 1, 0, 2), unit(1, 0, 0, 2)],
              # cosines p_i . t_j: 2/sqrt(18), 1/sqrt(15); 2/sqrt(12), 1/sqrt(10)
              "cos": [[2 / math.sqrt(18), 1 / math.sqrt(15)], [2 / math.sqrt(12), 1 / math.sqrt(10)]]},
    "released": {"protein": [unit(1, 1, 1, 2), unit(1, 1, 0, 5)], "text": [unit(1, 1, 0, 2), unit(1, 0, 2, 4)],
                 # 6/sqrt(42), 11/sqrt(147); 12/sqrt(162), 21/sqrt(567)
                 "cos": [[6 / math.sqrt(42), 11 / math.sqrt(147)], [12 / math.sqrt(162), 21 / math.sqrt(567)]]},
}  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_toy_batch_hand_computed(mode):
    model, loss_fn = toy_model(mode)
    batch = toy_batch()
    out, terms = run(model, loss_fn, batch)
    toy = TOY[mode]
    close(out["protein_features"], torch.stack(toy["protein"]), f"{mode}: pooled protein")
    close(out["text_features"], torch.stack(toy["text"]), f"{mode}: pooled text")
    # GC: 2x2 InfoNCE at s = 1/0.07; row i's CE is log(1 + exp(s (c_ij - c_ii))), j != i; columns likewise
    c, s = toy["cos"], 1 / 0.07
    lse = lambda x: math.log1p(math.exp(s * x))  # noqa: E731
    want = (
        lse(c[0][1] - c[0][0]) + lse(c[1][0] - c[1][1]) + lse(c[1][0] - c[0][0]) + lse(c[0][1] - c[1][1])
    ) / 4
    close(terms["loss_gc"], torch.tensor(want, dtype=torch.float64), f"{mode}: loss_gc by hand")
    # BSR: zero queries make every score 0, so the attention is uniform along the softmax axis.
    #   paper: over the real text tokens -> fused = mean of the attended text tokens: (1,1,0,2)/4, (1,0,0,2)/3
    #   released: over the 5 protein positions, every text token (padding too) -> sum of text tokens / 5
    if mode == "paper":
        fused = [torch.tensor([1, 1, 0, 2]) / 4, torch.tensor([1, 0, 0, 2]) / 3]
    else:
        fused = [torch.tensor([1, 1, 0, 2]) / 5, torch.tensor([1, 0, 2, 4]) / 5]
    rows = torch.stack([fused[0], fused[0], fused[1]]).float()  # span positions (0,1), (0,3), (1,2)
    with torch.no_grad():
        close(out["bsr_logits"], model.bsr_head(rows).double(), f"{mode}: BSR decoder output")
    # PDA: token mask, sub-text pooling (attended tokens in paper, every position in released)
    want_mask = [[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]] if mode == "paper" else [[1] * 5] * 2
    assert out["pda_token_mask"].tolist() == [[bool(v) for v in r] for r in want_mask]
    tt = model.text_tower.table.double()
    sub, sam = batch["subtext_input_ids"], batch["subtext_attention_mask"]
    m = (sam if mode == "paper" else torch.ones_like(sam)).double().unsqueeze(-1)
    u = (tt[sub] * m).sum(2) / m.sum(2)
    with torch.no_grad():
        close(out["pda_queries"], model.prototypes(u.float()).double(), f"{mode}: PDA property embeddings")
    pda = ref_pda(out["pda_tokens"], torch.tensor(want_mask, dtype=torch.bool), out["pda_queries"])
    assert pda["theta_margin"] > 1e-5
    want = (pda["e2q"] + pda["q2e"]) / 2 if mode == "paper" else pda["e2q"]
    close(terms["loss_pda"], want, f"{mode}: loss_pda")
