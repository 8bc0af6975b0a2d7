"""Total loss: L = L_GC + lambda_bsr L_BSR + lambda_mlm L_MLM + lambda_pda L_PDA over the enabled terms."""

from __future__ import annotations

import torch

from protclip.model.config import LossConfig, ModelConfig
from protclip.model.losses.bsr import bsr_loss
from protclip.model.losses.contrastive import GatherFn, global_contrastive_loss
from protclip.model.losses.mlm import mlm_loss
from protclip.model.losses.pda import pda_loss


def loss_weights(cfg: LossConfig) -> dict[str, float]:
    """Weight of each enabled ``loss_*`` term."""
    w = {"loss_gc": 1.0, "loss_bsr": cfg.lambda_bsr, "loss_mlm": cfg.lambda_mlm, "loss_pda": cfg.lambda_pda}
    on = {"loss_gc": cfg.gc, "loss_bsr": cfg.bsr, "loss_mlm": cfg.mlm, "loss_pda": cfg.pda}
    return {k: v for k, v in w.items() if on[k]}


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
        model_cfg = model_cfg or ModelConfig()
        self.cfg, self.mode, self.pda_threshold = cfg, model_cfg.mode, model_cfg.pda_threshold

    def __call__(
        self, out: dict[str, torch.Tensor], gather_fn: GatherFn | None = None
    ) -> dict[str, torch.Tensor]:
        cfg, terms = self.cfg, {}
        if cfg.gc:
            terms |= global_contrastive_loss(
                out["protein_features"], out["text_features"], out["logit_scale"], gather_fn
            )
        if cfg.mlm:
            terms |= mlm_loss(out["mlm_logits"], out["mlm_labels"])
        if cfg.bsr:
            terms |= bsr_loss(out["bsr_logits"], out["bsr_labels"])
        if cfg.pda:
            terms |= pda_loss(
                out["pda_tokens"], out["pda_token_mask"], out["pda_queries"], out["local_logit_scale"],
                threshold=self.pda_threshold, symmetric=self.mode == "paper",
            )  # fmt: skip
        terms["loss"] = weighted_total(terms, cfg)
        return terms
