"""The four ProtCLIP objectives; each returns a dict of named scalar terms (``loss_*`` plus detached metrics).

Which objectives exist, and everything the model, the total and the trainer need to know about each, is declared
once in :mod:`protclip.model.losses.registry`.
"""

from protclip.model.losses.bsr import bsr_loss
from protclip.model.losses.contrastive import GatheredFeatures, gather_all_ranks, global_contrastive_loss
from protclip.model.losses.mlm import mlm_loss
from protclip.model.losses.pda import pda_loss, pda_segments
from protclip.model.losses.total import ProtCLIPLoss, weighted_total

__all__ = [
    "GatheredFeatures",
    "ProtCLIPLoss",
    "bsr_loss",
    "gather_all_ranks",
    "global_contrastive_loss",
    "mlm_loss",
    "pda_loss",
    "pda_segments",
    "weighted_total",
]
