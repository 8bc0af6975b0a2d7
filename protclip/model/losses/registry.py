"""The objective registry: one :class:`Objective` record per pre-training objective (GC, BSR, MLM,
PDA).

Everything that differs between objectives lives in its record, so the model (which passes to run), the total
loss (which terms, with which weights) and the accumulating step (how each term's micro-batch share is counted,
which metrics follow it) read this table instead of keeping lists of their own. Adding an objective is its loss
module, one entry in :data:`OBJECTIVES`, and its flag and weight in :class:`~protclip.model.config.LossConfig`
(docs/training.md, "Adding an objective").

Callers read :data:`OBJECTIVES` through :func:`enabled_objectives` at call time (never bind it at import), so a
test can swap the table for a copy with an extra entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from protclip.model.config import LossConfig, ModelConfig
from protclip.model.losses.bsr import bsr_loss
from protclip.model.losses.contrastive import GatherFn, global_contrastive_loss
from protclip.model.losses.mlm import mlm_loss
from protclip.model.losses.pda import pda_loss

#: The model passes an objective may ask for, in the order ``ProtCLIPModel.forward`` runs them: clean ESM,
#: full text BERT, MLM-masked ESM, span-masked ESM (needs the text pass), the sub-text BERT passes (no grad).
PASSES = ("protein", "text", "mlm", "span", "subtexts")

#: The features ``ProtCLIPModel.forward`` can return; the two scales are always there.
FEATURES = (
    "logit_scale", "local_logit_scale", "protein_features", "text_features", "mlm_logits", "mlm_labels",
    "bsr_logits", "bsr_labels", "pda_tokens", "pda_token_mask", "pda_queries", "pda_cu_seqlens",
)  # fmt: skip


@dataclass(frozen=True)
class LossContext:
    """What a loss function may read besides the feature dict: the model config (mode, thresholds) and the GC
    gather override of gradient-cache accumulation (``None`` = all-gather over the ranks)."""

    model_cfg: ModelConfig
    gather_fn: GatherFn | None = None


LossFn = Callable[[dict[str, torch.Tensor], LossContext], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Objective:
    """One objective: how it is switched on and weighted, what it needs from the model, how it accumulates."""

    name: str  # short name; its loss term is ``loss_<name>``
    flag: str  # bool field of LossConfig that enables it
    weight_key: str | None  # float field of LossConfig holding its weight; None = fixed weight 1.0 (GC)
    passes: tuple[str, ...]  # model passes it needs (names from PASSES)
    features: tuple[str, ...]  # keys of the model's feature dict its loss reads (names from FEATURES)
    # per-sample terms are means inside a micro-batch, re-weighted by the micro-batch's share of the accumulated
    # batch; a batch-level term (GC) needs every micro-batch's features at once (the feature cache of step.py)
    per_sample: bool
    share: Literal["rows", "tokens"]  # what a micro-batch's share counts: its rows, or its target tokens
    share_labels: str | None  # "tokens": the batch key whose entries != IGNORE_INDEX are the target tokens
    metrics: tuple[str, ...]  # detached per-micro-batch means combined like the loss (accuracies)
    loss: LossFn  # feature dict -> {loss_<name>: scalar with grad, metrics and other detached values}

    def __post_init__(self) -> None:
        unknown = [p for p in self.passes if p not in PASSES]
        if unknown:
            raise ValueError(
                f"objective {self.name}: unknown passes {unknown}; the model runs {list(PASSES)}"
            )
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(
                f"objective {self.name}: unknown features {unknown}; the model returns {list(FEATURES)}"
            )
        if self.share not in ("rows", "tokens"):
            raise ValueError(f"objective {self.name}: share must be 'rows' or 'tokens', got {self.share!r}")
        if (self.share == "tokens") != (self.share_labels is not None):
            raise ValueError(f"objective {self.name}: share_labels is set exactly when share is 'tokens'")

    @property
    def loss_key(self) -> str:
        return f"loss_{self.name}"

    def enabled(self, cfg: LossConfig) -> bool:
        if not hasattr(cfg, self.flag):
            raise AttributeError(f"objective {self.name}: the loss config has no flag {self.flag!r} (add it)")
        return bool(getattr(cfg, self.flag))

    def weight(self, cfg: LossConfig) -> float:
        return 1.0 if self.weight_key is None else float(getattr(cfg, self.weight_key))


def _gc(out: dict[str, torch.Tensor], ctx: LossContext) -> dict[str, torch.Tensor]:
    return global_contrastive_loss(
        out["protein_features"], out["text_features"], out["logit_scale"], ctx.gather_fn
    )


def _mlm(out: dict[str, torch.Tensor], ctx: LossContext) -> dict[str, torch.Tensor]:
    return mlm_loss(out["mlm_logits"], out["mlm_labels"])


def _bsr(out: dict[str, torch.Tensor], ctx: LossContext) -> dict[str, torch.Tensor]:
    return bsr_loss(out["bsr_logits"], out["bsr_labels"])


def _pda(out: dict[str, torch.Tensor], ctx: LossContext) -> dict[str, torch.Tensor]:
    return pda_loss(
        out["pda_tokens"], out["pda_token_mask"], out["pda_queries"], out["local_logit_scale"],
        threshold=ctx.model_cfg.pda_threshold, symmetric=ctx.model_cfg.mode == "paper",
        cu_seqlens=out.get("pda_cu_seqlens"),  # present on packed batches (tokens [T, D])
    )  # fmt: skip


#: In the order of the total L = L_GC + lambda_bsr L_BSR + lambda_mlm L_MLM + lambda_pda L_PDA (the sum runs in
#: this order, so changing it changes the loss's last bits).
OBJECTIVES: tuple[Objective, ...] = (
    Objective(
        name="gc", flag="gc", weight_key=None, passes=("protein", "text"),
        features=("protein_features", "text_features", "logit_scale"),
        per_sample=False, share="rows", share_labels=None, metrics=("gc_accuracy",), loss=_gc,
    ),
    Objective(
        name="bsr", flag="bsr", weight_key="lambda_bsr", passes=("text", "span"),
        features=("bsr_logits", "bsr_labels"),
        per_sample=True, share="tokens", share_labels="span_labels", metrics=("bsr_accuracy",), loss=_bsr,
    ),
    Objective(
        name="mlm", flag="mlm", weight_key="lambda_mlm", passes=("mlm",),
        features=("mlm_logits", "mlm_labels"),
        per_sample=True, share="tokens", share_labels="mlm_labels", metrics=("mlm_accuracy",), loss=_mlm,
    ),
    Objective(
        name="pda", flag="pda", weight_key="lambda_pda", passes=("protein", "subtexts"),
        features=("pda_tokens", "pda_token_mask", "pda_queries", "local_logit_scale"),
        per_sample=True, share="rows", share_labels=None, metrics=("pda_accuracy",), loss=_pda,
    ),
)  # fmt: skip


def enabled_objectives(cfg: LossConfig) -> list[Objective]:
    """The objectives ``cfg`` (a LossConfig) switches on, in registry order."""
    return [o for o in OBJECTIVES if o.enabled(cfg)]


def needed_passes(cfg: LossConfig) -> frozenset[str]:
    """The model passes the enabled objectives need."""
    return frozenset(p for o in enabled_objectives(cfg) for p in o.passes)


def needed_features(cfg: LossConfig) -> frozenset[str]:
    """The feature-dict keys the enabled objectives read."""
    return frozenset(f for o in enabled_objectives(cfg) for f in o.features)
