"""Every objective on a packed batch equals the same rows without padding, loss terms and gradients.

Paper mode is padding-invariant, so a packed batch must equal the padded batch of the same rows (same masks and
spans: ``pack_batch`` only changes the layout). Released mode's plain means and protein-axis softmax include
padding by design, so its packed batch is compared with the rows run one by one (a batch of one sequence has
no padding): each row alone, and each of its sub-texts alone. Eval mode (no Gumbel noise, no dropout), fp32
against fp32, with the rounding budget of a forward + backward (``ULPS_NETWORK``).
"""

from __future__ import annotations

import pytest
import torch

from protclip.data.collate import pack_batch
from tests.helpers.model import row_batch, short_rows, tiny
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding

MODES = ("paper", "released")
TERMS = ("loss_gc", "loss_mlm", "loss_bsr", "loss_pda", "loss")
_PROTEIN = ("protein_input_ids", "protein_attention_mask", "mlm_input_ids", "mlm_labels", "span_input_ids",
            "span_labels")  # fmt: skip


def _rows():
    return short_rows(3) + row_batch(2)


def _grads(model, terms) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    terms["loss"].backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _row_alone(batch, i: int, prop: int | None = None) -> dict[str, torch.Tensor]:
    """Row ``i`` as a batch of one, cut to its own lengths (no padding); ``prop``: only that sub-text."""
    n = int(batch["protein_attention_mask"][i].sum())
    nt = int(batch["text_attention_mask"][i].sum())
    out = {k: batch[k][i : i + 1, :n] for k in _PROTEIN}
    out |= {k: batch[k][i : i + 1, :nt] for k in ("text_input_ids", "text_attention_mask")}
    sub_ids, sub_am = batch["subtext_input_ids"][i : i + 1], batch["subtext_attention_mask"][i : i + 1]
    if prop is not None:
        ns = int(sub_am[0, prop].sum())
        sub_ids, sub_am = sub_ids[:, prop : prop + 1, :ns], sub_am[:, prop : prop + 1, :ns]
    return out | {"subtext_input_ids": sub_ids, "subtext_attention_mask": sub_am,
                  "property_present": batch["property_present"][i : i + 1]}


def _one_by_one(model, batch) -> dict[str, torch.Tensor]:
    """The model's feature dict assembled from each row run alone (and each sub-text alone)."""
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(batch["protein_input_ids"].shape[0]):
        o = model(_row_alone(batch, i))
        queries = [model(_row_alone(batch, i, k))["pda_queries"] for k in range(batch["subtext_input_ids"].shape[1])]
        o["pda_queries"] = torch.cat(queries, dim=1)
        for k, v in o.items():
            parts.setdefault(k, []).append(v)
    out = {k: torch.cat(v) for k, v in parts.items() if k not in ("logit_scale", "local_logit_scale", "pda_tokens",
                                                                  "pda_token_mask")}  # fmt: skip
    out["logit_scale"], out["local_logit_scale"] = parts["logit_scale"][0], parts["local_logit_scale"][0]
    # PDA tokens of different lengths: padded here with masked-out positions (PDA ignores them)
    width = max(t.shape[1] for t in parts["pda_tokens"])
    out["pda_tokens"] = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))
                                   for t in parts["pda_tokens"]])
    out["pda_token_mask"] = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1]))
                                       for m in parts["pda_token_mask"]])
    return out


def _compare(got_terms, got_grads, ref_terms, ref_grads, what: str) -> None:
    for k in TERMS:
        assert_close_rounding(got_terms[k].detach(), ref_terms[k].detach(), ULPS_NETWORK, msg=f"{what} {k}")
    assert set(got_grads) == set(ref_grads), set(got_grads) ^ set(ref_grads)
    # one backward: every gradient carries the rounding of the largest terms summed into it (a bias whose exact
    # gradient cancels to 0, like the BSR key bias under softmax, keeps only that rounding): the scale is the
    # largest gradient entry of the model
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name, g in ref_grads.items():
        assert_close_rounding(got_grads[name], g, ULPS_NETWORK, scale=scale, msg=f"{what} grad {name}")


@pytest.fixture(scope="module", params=MODES)
def setup(request):
    model, loss_fn, col = tiny(request.param)
    model.eval()
    batch = col(_rows(), seed=0)
    assert (batch["protein_attention_mask"] == 0).any() and (batch["text_attention_mask"] == 0).any()
    return request.param, model, loss_fn, batch


def test_packed_terms_and_gradients_equal_the_rows_unpadded(setup):
    mode, model, loss_fn, batch = setup
    packed = pack_batch(batch)
    got = loss_fn(model(packed))
    got_grads = _grads(model, got)
    ref = loss_fn(_one_by_one(model, batch))
    _compare(got, got_grads, ref, _grads(model, ref), f"{mode} packed vs one by one")
    assert all(float(got[k].detach()) > 0 for k in TERMS)


def test_paper_packed_equals_the_padded_batch(setup):
    mode, model, loss_fn, batch = setup
    if mode != "paper":
        pytest.skip("released mode pools over padding by design: compared with the rows one by one instead")
    got = loss_fn(model(pack_batch(batch)))
    got_grads = _grads(model, got)
    ref = loss_fn(model(batch))
    _compare(got, got_grads, ref, _grads(model, ref), "paper packed vs padded")


def test_bsr_attends_only_to_its_own_text(setup):
    """Changing one row's text changes only that row's BSR logits (cross-attention restricted to the pair)."""
    mode, model, _, batch = setup
    packed = pack_batch(batch)
    with torch.no_grad():
        before = model(packed)
        other = dict(packed)
        ids = packed["text_input_ids"].clone()
        cu = packed["text_cu_seqlens"]
        ids[0, int(cu[1]) + 1 : int(cu[2]) - 1] = ids[0, int(cu[1]) + 1 : int(cu[2]) - 1].flip(0) + 1  # row 1
        other["text_input_ids"] = ids
        after = model(other)
    sel = packed["span_labels"][0] != -100
    owner = torch.repeat_interleave(torch.arange(len(cu) - 1), torch.diff(packed["protein_cu_seqlens"]))[sel]
    changed = (before["bsr_logits"] - after["bsr_logits"]).abs().amax(-1) > 0
    assert changed[owner == 1].all() and not changed[owner != 1].any()
