"""Whole model: gradient flow per objective and mode, full forward+backward, export."""

from __future__ import annotations

import json

import pytest
import torch

from protclip.model.protclip import export_towers, param_groups
from tests.helpers.model import ref_clip_loss, ref_forward, ref_pda, row_batch, tiny
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding


def close64(actual, expected, msg=""):
    """float32 model output vs a float64 reference from the method's formulas (a few layers of heads)."""
    assert_close_rounding(actual, torch.as_tensor(expected, dtype=torch.float64), ULPS_NETWORK,
                          dtype=torch.float32, msg=msg)  # fmt: skip


GROUPS = ("protein_tower", "text_tower", "protein_proj", "text_proj", "mlm_head", "bsr_head", "decoder",
          "prototypes", "logit_scale", "local_logit_scale")  # fmt: skip
_COMMON = {
    "loss_gc": {"protein_tower", "protein_proj", "text_proj", "logit_scale"},
    "loss_mlm": {"protein_tower", "mlm_head"},
    "loss_pda": {"protein_tower", "protein_proj", "prototypes", "local_logit_scale"},
}
EXPECTED = {
    # paper: BSR trains the encoder, both projections and the decoder through the reconstruction
    "paper": _COMMON | {"loss_bsr": {"protein_tower", "protein_proj", "text_proj", "decoder", "bsr_head"}},
    # released: everything before the BSR head runs under no_grad, so only the head learns
    "released": _COMMON | {"loss_bsr": {"bsr_head"}},
}


def group_of(name: str) -> str:
    return next(g for g in GROUPS if name == g or name.startswith(g + "."))


def groups_with_grad(model, loss: torch.Tensor) -> set[str]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {
        group_of(n) for (n, _), g in zip(named, grads, strict=True) if g is not None and g.abs().sum() > 0
    }


@pytest.fixture(scope="module")
def batch_rows():
    return row_batch(6)


@pytest.mark.parametrize("mode", ["paper", "released"])
def test_gradient_reaches_exactly_the_right_parameters(mode, batch_rows):
    model, loss_fn, col = tiny(mode)
    model.train()
    terms = loss_fn(model(col(batch_rows, seed=0)))  # one forward, one backward per term
    for term, expected in EXPECTED[mode].items():
        assert groups_with_grad(model, terms[term]) == expected, term
    assert not any(p.requires_grad for p in model.text_tower.parameters())  # frozen: no term reaches it


@pytest.mark.parametrize("mode", ["paper", "released"])
def test_full_forward_backward_on_real_rows(mode, batch_rows):
    model, loss_fn, col = tiny(mode, seed=1)
    model.train()
    batch = col(batch_rows, seed=1)
    out = model(batch)
    terms = loss_fn(out)
    for k in ("loss_gc", "loss_mlm", "loss_bsr", "loss_pda", "loss"):
        assert torch.isfinite(terms[k]) and terms[k].ndim == 0, k
    expected = terms["loss_gc"] + 0.7 * terms["loss_bsr"] + 0.3 * terms["loss_mlm"] + 1.0 * terms["loss_pda"]
    torch.testing.assert_close(terms["loss"], expected)
    assert abs(terms["loss_pda"].item() - torch.log(torch.tensor(4.0)).item()) < 1.0  # 4-way InfoNCE at init
    # ... and exactly PDA's 4-way InfoNCE at its initial temperature 0.1 (GC: 0.07), in the
    # direction(s) of the mode; a wrong temperature passes the bound above but not this
    close64(out["local_logit_scale"], [10.0], "PDA multiplier at init")
    close64(out["logit_scale"], [1 / 0.07], "GC multiplier at init")
    pda = ref_pda(out["pda_tokens"].detach(), out["pda_token_mask"], out["pda_queries"].detach(), scale=10.0)
    assert pda["theta_margin"] > 1e-5
    want = (pda["e2q"] + pda["q2e"]) / 2 if mode == "paper" else pda["e2q"]
    close64(terms["loss_pda"], want, "loss_pda at init")
    p, t = out["protein_features"].detach(), out["text_features"].detach()
    close64(terms["loss_gc"], ref_clip_loss(p, t, 1 / 0.07), "loss_gc at init")
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert out["pda_queries"].shape == (len(batch_rows), 4, model.cfg.projection_dim)
    assert out["mlm_logits"].shape[0] == (batch["mlm_labels"] != -100).sum()


def test_frozen_parts_param_groups_and_encoders(batch_rows):
    model, _, col = tiny("paper")
    model.train()
    assert not model.text_tower.training and model.protein_tower.training
    assert not any(p.requires_grad for p in model.text_tower.parameters())
    assert not any(p.requires_grad for p in model.protein_tower.contact_head.parameters())
    assert model.logit_scale.shape == (1,) and model.local_logit_scale.shape == (1,)  # FSDP2 needs 1-D
    groups = {g["name"]: g for g in param_groups(model, 1e-3, protein_lr_ratio=0.1, weight_decay=0.01)}
    assert groups["protein_tower_decay"]["lr"] == pytest.approx(1e-4) and groups["heads_decay"]["lr"] == 1e-3
    assert groups["heads"]["weight_decay"] == 0.0  # biases, norms, logit scales
    ids = {id(p) for g in groups.values() for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.logit_scale) in {id(p) for p in groups["heads"]["params"]}
    # the clamped scale: never above max_logit_scale
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scales()[0].item() == pytest.approx(100.0)
    model.eval()
    batch = col(batch_rows, seed=0)
    with torch.no_grad():
        out = model(batch)
        torch.testing.assert_close(
            model.encode_protein(batch["protein_input_ids"], batch["protein_attention_mask"]),
            out["protein_features"],
        )
        torch.testing.assert_close(
            model.encode_text(batch["text_input_ids"], batch["text_attention_mask"]), out["text_features"]
        )
        ids = batch["protein_input_ids"]
        assert model.mlm_logits(ids, batch["protein_attention_mask"]).shape == (*ids.shape, 33)
    # the pooling itself (the comparisons above share the model's pooling function): paper mode is a masked
    # mean over residues (protein, no <cls>/<eos>/padding) and over attended tokens (text)
    ref = ref_forward(model, batch, "paper")
    with torch.no_grad():
        close64(
            model.encode_protein(ids, batch["protein_attention_mask"]), ref["protein_features"], "protein"
        )
        close64(model.encode_text(batch["text_input_ids"], batch["text_attention_mask"]), ref["text_features"],
                "text")  # fmt: skip


def test_export_towers_loads_with_plain_transformers(tmp_path, batch_rows):
    from transformers import AutoTokenizer, BertModel, EsmModel

    model, _, col = tiny("paper", attention="xformers")
    model.eval()
    batch = col(batch_rows[:2], seed=0)
    export_towers(model, tmp_path)
    for sub in ("protein", "text"):
        assert "xformers" not in json.loads((tmp_path / sub / "config.json").read_text()).get(
            "_attn_implementation", ""
        )
    esm = EsmModel.from_pretrained(tmp_path / "protein", attn_implementation="eager").eval()
    bert = BertModel.from_pretrained(tmp_path / "text", attn_implementation="eager").eval()
    with torch.no_grad():
        ids, am = batch["protein_input_ids"], batch["protein_attention_mask"]
        ref = model.protein_tower(input_ids=ids, attention_mask=am).last_hidden_state
        got = esm(input_ids=ids, attention_mask=am).last_hidden_state
        assert (ref - got)[am.bool()].abs().max() < 1e-5
        tid, tam = batch["text_input_ids"], batch["text_attention_mask"]
        ref = model.text_tower(input_ids=tid, attention_mask=tam).last_hidden_state
        assert (ref - bert(input_ids=tid, attention_mask=tam).last_hidden_state)[
            tam.bool()
        ].abs().max() < 1e-5
    assert AutoTokenizer.from_pretrained(tmp_path / "protein")("MKT")["input_ids"] == [0, 20, 15, 11, 2]
    assert AutoTokenizer.from_pretrained(tmp_path / "text").cls_token == "[CLS]"
    assert (tmp_path / "heads.safetensors").stat().st_size > 0
