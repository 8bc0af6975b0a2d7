"""The objective registry is the one place objectives are declared.

The four built-in records agree with LossConfig and the method's total; the model runs exactly the passes the
enabled objectives need; and a toy objective added only to (a monkeypatched copy of) the registry, with its flag
and weight on a LossConfig subclass, enters the total with its weight and is accumulated by its token share by
``forward_backward``, without any other module knowing it.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

import protclip.model.protclip as protclip_model
from protclip.data.masking import IGNORE_INDEX
from protclip.model.config import LossConfig, tiny_model_config
from protclip.model.losses import ProtCLIPLoss, registry
from protclip.model.losses.registry import LossContext, Objective, enabled_objectives, needed_passes
from protclip.model.losses.total import loss_weights
from protclip.model.protclip import build_model
from protclip.train.step import forward_backward
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding
from tests.helpers.train import split_batch, synthetic_rows, tiny_setup

ONLY = {  # LossConfig switches with exactly one objective on
    name: {flag: flag == name for flag in ("gc", "mlm", "bsr", "pda")} for name in ("gc", "mlm", "bsr", "pda")
}


# ------------------------------------------------------------------------------------------ a toy objective
def toy_loss(out: dict[str, torch.Tensor], ctx: LossContext) -> dict[str, torch.Tensor]:
    """A token mean over the MLM targets (log-sum-exp of the MLM logits), with one detached token-mean metric."""
    lse = out["mlm_logits"].float().logsumexp(-1)
    return {"loss_toy": lse.mean(), "toy_max_logit": out["mlm_logits"].detach().float().amax(-1).mean()}


TOY = Objective(
    name="toy", flag="toy", weight_key="lambda_toy", passes=("mlm",), features=("mlm_logits", "mlm_labels"),
    per_sample=True, share="tokens", share_labels="mlm_labels", metrics=("toy_max_logit",), loss=toy_loss,
)  # fmt: skip


@dataclasses.dataclass
class ToyLossConfig(LossConfig):
    toy: bool = True
    lambda_toy: float = 0.25


@pytest.fixture
def with_toy(monkeypatch):
    """The registry with TOY appended; monkeypatch restores the global table afterwards."""
    monkeypatch.setattr(registry, "OBJECTIVES", (*registry.OBJECTIVES, TOY))


def _model(lcfg: LossConfig):
    """An eval-mode tiny model for ``lcfg`` (same init whatever the objectives), its loss, and a collator."""
    _, _, collator = tiny_setup(seed=0)
    mcfg = tiny_model_config()
    torch.manual_seed(0)
    return build_model(mcfg, lcfg).eval(), ProtCLIPLoss(lcfg, mcfg), collator


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------ built-in records
def test_records_match_loss_config_and_the_method_total():
    fields = {f.name: f for f in dataclasses.fields(LossConfig)}
    for o in registry.OBJECTIVES:
        assert fields[o.flag].type in (bool, "bool"), o.name
        assert o.weight_key is None or fields[o.weight_key].type in (float, "float"), o.name
        assert o.loss_key == f"loss_{o.name}"
        assert o.per_sample == (o.name != "gc")
    # LossConfig's checks treat every bool field as an objective switch and every lambda_* as a weight
    assert {n for n, f in fields.items() if f.type in (bool, "bool")} == {o.flag for o in registry.OBJECTIVES}
    weight_keys = {o.weight_key for o in registry.OBJECTIVES if o.weight_key is not None}
    assert {n for n in fields if n.startswith("lambda_")} == weight_keys
    # the summation order of L = L_GC + 0.7 L_BSR + 0.3 L_MLM + 1.0 L_PDA (the ProtCLIP paper's weights)
    assert list(loss_weights(LossConfig()).items()) == [
        ("loss_gc", 1.0), ("loss_bsr", 0.7), ("loss_mlm", 0.3), ("loss_pda", 1.0)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least one"):
        LossConfig(**{o.flag: False for o in registry.OBJECTIVES})
    assert [o.name for o in enabled_objectives(LossConfig(bsr=False, pda=False))] == ["gc", "mlm"]


def test_record_rejects_unknown_passes_features_and_shares():
    base = dataclasses.asdict(TOY) | {"loss": toy_loss}
    with pytest.raises(ValueError, match="unknown passes"):
        Objective(**base | {"passes": ("esm3",)})
    with pytest.raises(ValueError, match="unknown features"):
        Objective(**base | {"features": ("mlm_probs",)})
    with pytest.raises(ValueError, match="share_labels"):
        Objective(**base | {"share_labels": None})
    with pytest.raises(ValueError, match="share_labels"):
        Objective(**base | {"share": "rows"})


@pytest.mark.parametrize(
    "name, passes, rng_keys",
    [
        ("gc", {"protein", "text"}, ["protein", "text"]),
        ("mlm", {"mlm"}, ["mlm"]),
        ("bsr", {"text", "span"}, ["text", "span"]),
        ("pda", {"protein", "subtexts"}, ["protein", "pda"]),
    ],
)
def test_forward_runs_only_the_passes_the_objective_needs(name, passes, rng_keys, monkeypatch):
    lcfg = LossConfig(**ONLY[name])
    assert needed_passes(lcfg) == passes
    model, loss_fn, collator = _model(lcfg)
    seen: list[str] = []
    real = protclip_model._pass_rng

    @contextlib.contextmanager
    def recording(pass_name: str):
        seen.append(pass_name)
        with real(pass_name):
            yield

    monkeypatch.setattr(protclip_model, "_pass_rng", recording)
    with torch.no_grad():
        out = model(collator(synthetic_rows(4, seed=1)))
    assert seen == rng_keys  # each pass once, in the model's fixed order
    objective = next(o for o in registry.OBJECTIVES if o.name == name)
    assert set(out) == set(objective.features) | {"logit_scale", "local_logit_scale"}
    assert set(loss_fn(out)) >= {objective.loss_key, "loss", *objective.metrics}


# ------------------------------------------------------------------------------------------ adding an objective
def test_toy_flag_and_weight_are_validated_like_the_others(with_toy):
    ToyLossConfig(gc=False, mlm=False, bsr=False, pda=False)  # the toy alone is an enabled objective
    with pytest.raises(ValueError, match="at least one of gc, mlm, bsr, pda, toy"):
        ToyLossConfig(gc=False, mlm=False, bsr=False, pda=False, toy=False)
    with pytest.raises(ValueError, match="lambda_toy"):
        ToyLossConfig(lambda_toy=-1.0)


def test_toy_objective_enters_the_total_with_its_weight(with_toy):
    model, loss_fn, collator = _model(ToyLossConfig())
    batch = collator(synthetic_rows(4, seed=1))
    with torch.no_grad():
        out = model(batch)
    terms = loss_fn(out)
    plain = ProtCLIPLoss(ToyLossConfig(toy=False), tiny_model_config())(out)
    assert "loss_toy" not in plain
    assert list(loss_weights(ToyLossConfig())) == ["loss_gc", "loss_bsr", "loss_mlm", "loss_pda", "loss_toy"]
    torch.testing.assert_close(terms["loss_toy"], toy_loss(out, LossContext(tiny_model_config()))["loss_toy"])
    torch.testing.assert_close(terms["loss"], plain["loss"] + 0.25 * terms["loss_toy"], rtol=0, atol=0)
    with pytest.raises(AttributeError, match="no flag 'toy'"):  # a registry entry without its config field
        ProtCLIPLoss(LossConfig(), tiny_model_config())(out)


def test_toy_objective_brings_its_pass_when_its_host_objective_is_off(with_toy):
    lcfg = ToyLossConfig(mlm=False, bsr=False, pda=False)
    model, loss_fn, collator = _model(lcfg)
    with torch.no_grad():
        terms = loss_fn(model(collator(synthetic_rows(4, seed=1))))
    assert "loss_mlm" not in terms and "mlm_accuracy" not in terms
    torch.testing.assert_close(terms["loss"], terms["loss_gc"] + 0.25 * terms["loss_toy"], rtol=0, atol=0)


def test_forward_backward_accumulates_the_toy_objective_by_its_token_share(with_toy):
    """Split 2 x 4, the toy term (a token mean) and its gradients equal the full 8-row batch: each micro-batch is
    weighted by its share of MLM target tokens. Shares by rows would miss, since the token counts differ."""
    model, loss_fn, collator = _model(ToyLossConfig(gc=False, bsr=False, pda=False, mlm=False))
    batch = collator(synthetic_rows(8, seed=1))
    halves = split_batch(batch, 2)
    tokens = [int((mb["mlm_labels"] != IGNORE_INDEX).sum()) for mb in halves]
    assert tokens[0] != tokens[1]

    ref = forward_backward(model, loss_fn, [batch])
    ref_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    acc = forward_backward(model, loss_fn, halves)
    grads = _grads(model)

    assert set(acc.values) == {"loss", "loss_toy", "toy_max_logit"}
    for k in ("loss_toy", "toy_max_logit"):
        assert_close_rounding(torch.tensor(acc.values[k]), torch.tensor(ref.values[k]), ULPS_NETWORK, msg=k)
    assert acc.values["loss"] == pytest.approx(0.25 * acc.values["loss_toy"], rel=1e-12)
    with torch.no_grad():
        parts = [float(loss_fn(model(mb))["loss_toy"]) for mb in halves]
    by_rows = sum(parts) / 2
    assert abs(by_rows - ref.values["loss_toy"]) > 100 * abs(acc.values["loss_toy"] - ref.values["loss_toy"])
    assert grads.keys() == ref_grads.keys() and grads  # the MLM head and the protein tower learn from the toy
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name in ref_grads:
        assert_close_rounding(grads[name], ref_grads[name], ULPS_NETWORK, scale=scale, msg=name)


def test_forward_backward_refuses_to_accumulate_a_batch_level_objective_it_has_no_cache_for(monkeypatch):
    batch_level = dataclasses.replace(TOY, per_sample=False)
    monkeypatch.setattr(registry, "OBJECTIVES", (*registry.OBJECTIVES, batch_level))
    lcfg = ToyLossConfig(bsr=False, pda=False)
    model, loss_fn, collator = _model(lcfg)
    batch = collator(synthetic_rows(4, seed=1))
    forward_backward(model, loss_fn, [batch])  # one micro-batch: a plain full-batch loss
    with pytest.raises(ValueError, match=r"\['toy'\] are batch-level"):
        forward_backward(model, loss_fn, split_batch(batch, 2))
