"""Total loss: L = L_GC + lambda_bsr L_BSR + lambda_mlm L_MLM + lambda_pda L_PDA over the enabled objectives.

Which terms exist, their weights and their loss functions come from the objective registry
(:mod:`protclip.model.losses.registry`), so this module names no objective.
"""

from __future__ import annotations

import torch

from protclip.model.config import LossConfig, ModelConfig
from protclip.model.losses.contrastive import GatherFn
from protclip.model.losses.registry import LossContext, enabled_objectives


def loss_weights(cfg: LossConfig) -> dict[str, float]:
    """Weight of each enabled ``loss_*`` term, in registry (summation) order."""
    return {o.loss_key: o.weight(cfg) for o in enabled_objectives(cfg)}


def weighted_total(terms: dict[str, torch.Tensor], cfg: LossConfig) -> torch.Tensor:
    weights = loss_weights(cfg)
    missing = [k for k in weights if k not in terms]
    if missing:
        raise KeyError(f"loss terms {missing} are enabled but were not computed")
    return sum(w * terms[k] for k, w in weights.items())


class ProtCLIPLoss:
    """``ProtCLIPLoss(loss_cfg, model_cfg)(model_out, gather_fn=None)`` -> dict with ``loss`` and each named term.

    ``model_out`` is the feature dict of :meth:`ProtCLIPModel.forward`. ``gather_fn`` overrides the GC
    all-gather (gradient-cache accumulation); the other terms are per-sample and need no communication.
    """

    def __init__(self, cfg: LossConfig, model_cfg: ModelConfig | None = None) -> None:
        self.cfg, self.model_cfg = cfg, model_cfg or ModelConfig()

    def __call__(
        self, out: dict[str, torch.Tensor], gather_fn: GatherFn | None = None
    ) -> dict[str, torch.Tensor]:
        ctx, terms = LossContext(self.model_cfg, gather_fn), {}
        for objective in enabled_objectives(self.cfg):
            missing = [f for f in objective.features if f not in out]
            if missing:
                raise KeyError(
                    f"objective {objective.name} needs features {missing} the model did not return"
                )
            terms |= objective.loss(out, ctx)
        terms["loss"] = weighted_total(terms, self.cfg)
        return terms
