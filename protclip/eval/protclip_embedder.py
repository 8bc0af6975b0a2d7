"""An :class:`~protclip.eval.embedder.Embedder` for a ProtCLIP model, and loading that model for evaluation from a
DCP pre-training checkpoint or an export folder, in one plain process (no process group, no Ray).

Which protein vector a suite gets matters: retrieval and zero-shot compare proteins with texts, so they need the
*joint* space (``encode_protein``: pooled, projected, L2-normalised, exactly as trained); linear probes, fine-tune
heads and PPI follow the usual protocol of a *tower* embedding (mean of the protein tower's last layer over
residues, no projection). ``protein_space`` picks one; :meth:`ProtCLIPEmbedder.with_space` shares the loaded model.
Mutation effect uses the MLM head on the protein tower (masked marginals), through the tested
:class:`~protclip.eval.embedder.HFProteinEmbedder` machinery (deterministic crops, windows around mutations).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protclip.eval.embedder import HFProteinEmbedder, length_batches, resolve_device
from protclip.model.config import ModelConfig
from protclip.model.protclip import ProtCLIPModel

_log = logging.getLogger(__name__)

__all__ = [
    "ProtCLIPEmbedder",
    "model_from_checkpoint",
    "model_from_export",
    "find_run_config",
    "model_config_from_file",
    "EXPORT_FILES",
    "CONFIG_NAMES",
]

#: what ``protclip.model.protclip.export_towers`` writes (the trainer's ``<run>/export``)
EXPORT_FILES = ("protein/config.json", "text/config.json", "heads.safetensors")
#: run config files looked for beside a checkpoint/export and in the folders above (same names as LoRA's loader)
CONFIG_NAMES = (
    "protclip_model.json",
    "config.yaml",
    "config.yml",
    "config.json",
    "run_config.yaml",
    "pretrain_config.yaml",
)
SPACES = ("joint", "tower")


class _EsmWithMLMHead(nn.Module):
    """ProtCLIP's protein tower + MLM head shaped like HF's ``EsmForMaskedLM`` (``.esm``, ``.lm_head``,
    ``forward(...).logits``), so :class:`HFProteinEmbedder` can pool and score masked marginals with it."""

    def __init__(self, tower: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.esm = tower
        self.lm_head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        hidden = self.esm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return _Logits(self.lm_head(hidden))


class _Logits:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class ProtCLIPEmbedder:
    """Embeddings of a (loaded, eval-mode) :class:`ProtCLIPModel`; see the module docstring for the spaces."""

    def __init__(
        self,
        model: ProtCLIPModel,
        *,
        protein_space: str = "joint",
        device: str | torch.device = "auto",
        max_tokens_per_batch: int | None = 16384,
        text_tokenizer: Any = None,
    ) -> None:
        """``text_tokenizer``: an already loaded BERT tokenizer (needed when the model was loaded from a temporary
        copy that is gone by now); default: loaded on first use from the model config's text tokenizer source."""
        from protclip.data.tokenizers import ProteinTokenizer

        if protein_space not in SPACES:
            raise ValueError(f"protein_space must be one of {SPACES}, got {protein_space!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.protein_space = protein_space
        self.max_tokens_per_batch = max_tokens_per_batch
        self.tower = HFProteinEmbedder(
            _EsmWithMLMHead(model.protein_tower, model.mlm_head),
            ProteinTokenizer().to_hf(),
            max_length=model.cfg.max_protein_length,
            device=self.device,
            max_tokens_per_batch=max_tokens_per_batch,
        )
        self._text_tok: Any = text_tokenizer

    def with_space(self, protein_space: str) -> ProtCLIPEmbedder:
        """The same loaded model with another protein space (no copy of the weights)."""
        if protein_space not in SPACES:
            raise ValueError(f"protein_space must be one of {SPACES}, got {protein_space!r}")
        other = copy.copy(self)
        other.protein_space = protein_space
        return other

    # ---- what finetune_head(mode="partial") needs: the protein tower as an HF model
    @property
    def base(self) -> nn.Module:
        return self.tower.base

    def encode(self, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tower.encode(sequences)

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.tower.pool(hidden, input_ids, attention_mask)

    # ---- Embedder protocol
    @torch.no_grad()
    def embed_proteins(self, sequences: list[str], batch_size: int) -> np.ndarray:
        if self.protein_space == "tower":
            return self.tower.embed_proteins(sequences, batch_size)
        if not sequences:
            raise ValueError("embed_proteins got no sequences")
        lengths = [min(len(s), self.tower.max_residues) + 2 for s in sequences]
        out = np.empty((len(sequences), self.model.cfg.projection_dim), dtype=np.float32)
        for batch in length_batches(lengths, batch_size, self.max_tokens_per_batch):
            ids, mask = self.tower.encode([sequences[i] for i in batch])
            emb = self.model.encode_protein(ids.to(self.device), mask.to(self.device))
            out[batch] = emb.float().cpu().numpy()
        return out

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Joint-space text embeddings, tokenized as in pre-training (truncated to ``max_text_length``)."""
        if not texts:
            raise ValueError("embed_texts got no texts")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"embed_texts: texts {bad[:5]} are empty or not strings")
        tok, max_len = self.text_tokenizer, self.model.cfg.max_text_length
        out = np.empty((len(texts), self.model.cfg.projection_dim), dtype=np.float32)
        # ~4 characters per word piece is enough to group similar lengths; the budget is in sequences
        for batch in length_batches([min(len(t) // 4 + 2, max_len) for t in texts], batch_size):
            enc = tok(
                [texts[i] for i in batch],
                truncation=True,
                max_length=max_len,
                padding="longest",
                return_tensors="pt",
            )
            emb = self.model.encode_text(
                enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            )
            out[batch] = emb.float().cpu().numpy()
        return out

    def mlm_log_probs(self, sequence: str, positions: list[int]) -> np.ndarray:
        return self.tower.mlm_log_probs(sequence, positions)

    def mlm_log_probs_batch(
        self, sequence: str, position_sets: list[list[int]], batch_size: int = 8
    ) -> list[np.ndarray]:
        return self.tower.mlm_log_probs_batch(sequence, position_sets, batch_size)

    @property
    def text_tokenizer(self) -> Any:
        if self._text_tok is None:
            self._text_tok = load_model_text_tokenizer(self.model.cfg)
        return self._text_tok


def load_model_text_tokenizer(cfg: ModelConfig) -> Any:
    """The BERT tokenizer the model's text tower was trained with (``text_tokenizer`` or the text model source)."""
    from protclip.data.tokenizers import load_text_tokenizer, text_tokenizer_dir

    return load_text_tokenizer(text_tokenizer_dir(cfg.text_model, cfg.text_tokenizer))


# ------------------------------------------------------------------------------------------------ loading


def _eval_model_config(cfg: ModelConfig) -> ModelConfig:
    """Training-only switches off (activation checkpointing)."""
    return replace(cfg, gradient_checkpointing=False)


def model_from_checkpoint(
    directory: str | Path, model_cfg: ModelConfig
) -> tuple[ProtCLIPModel, dict[str, Any]]:
    """Load the model tensors of a (verified) DCP pre-training checkpoint into a fresh model, single process.

    Returns ``(model, trainer_state)``. Only the ``model`` part of the checkpoint is read (not the optimizer);
    DCP reshards, so a checkpoint written by any number of FSDP2 ranks loads here.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from protclip.train.checkpoint import STATE_FILE, verify_checkpoint
    from protclip.train.safe_dcp import safe_reader

    root = Path(directory)
    verify_checkpoint(root)
    state = json.loads((root / STATE_FILE).read_text()) if (root / STATE_FILE).is_file() else {}
    torch.manual_seed(0)
    model = ProtCLIPModel(_eval_model_config(model_cfg))
    sd = {"model": get_model_state_dict(model)}
    try:
        with warnings.catch_warnings():  # "no process group: assuming a single process" is the intent here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(sd, storage_reader=safe_reader(root))  # metadata unpickled with an allow-list
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException; names keys/shapes
        raise ValueError(
            f"checkpoint {root} could not be loaded into the configured model (model section): {e}"
        ) from None
    set_model_state_dict(model, sd["model"])
    return model.eval(), state


def model_from_export(directory: str | Path, model_cfg: ModelConfig | None = None) -> ProtCLIPModel:
    """Load an export folder (``protein/``, ``text/`` from ``save_pretrained`` and ``heads.safetensors``).

    The towers' architecture comes from their own ``config.json``; the rest of the model section (mode, lengths)
    from ``model_cfg``, else a run config beside/above the folder, else it is inferred from the head shapes
    (``mode`` then defaults to ``paper``, logged as a warning). Missing head weights are an error: the joint space
    is meaningless with random projections.
    """
    from safetensors.torch import load_file

    root = Path(directory)
    missing_files = [f for f in EXPORT_FILES if not (root / f).is_file()]
    if missing_files:
        raise FileNotFoundError(f"export {root}: missing {missing_files} (expected {list(EXPORT_FILES)})")
    heads = load_file(str(root / "heads.safetensors"))
    if model_cfg is None:
        found = find_run_config(root)
        model_cfg = model_config_from_file(found) if found else _infer_model_config(root, heads)
    cfg = replace(
        _eval_model_config(model_cfg),
        protein_model=str(root / "protein"),
        text_model=str(root / "text"),
        text_tokenizer=str(root / "text"),
    )
    model = ProtCLIPModel(cfg)
    missing, unexpected = model.load_state_dict(heads, strict=False)
    not_towers = [k for k in missing if not k.startswith(("protein_tower.", "text_tower."))]
    if not_towers or unexpected:
        raise ValueError(
            f"export {root}: heads.safetensors does not fit the model (missing {sorted(not_towers)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}); is the model section right?"
        )
    return model.eval()


def _infer_model_config(root: Path, heads: dict[str, torch.Tensor]) -> ModelConfig:
    try:
        proj = int(heads["protein_proj.0.weight"].shape[0])
        protos = int(heads["prototypes.prototypes.weight"].shape[0])
    except KeyError as e:
        raise ValueError(f"export {root}: heads.safetensors lacks {e}; not a ProtCLIP export") from None
    text_conf = json.loads((root / "text" / "config.json").read_text())
    max_text = min(512, int(text_conf.get("max_position_embeddings", 512)))
    _log.warning(
        "export %s has no run config beside it: model.mode is assumed 'paper' (projection_dim %d, "
        "proto_num %d inferred); pass source.model_config for a 'released'-mode run",
        root,
        proj,
        protos,
    )
    return ModelConfig(
        protein_model="random",
        text_model="random",
        projection_dim=proj,
        proto_num=protos,
        max_text_length=max_text,
        max_subtext_length=max_text,
    )


def find_run_config(start: str | Path, levels: int = 3) -> Path | None:
    """A run config file with a ``model`` section in ``start`` or up to ``levels`` folders above it (files of
    those names without one, e.g. an HF ``config.json``, are passed over)."""
    start = Path(start)
    for d in [start, *list(start.parents)[:levels]]:
        for name in CONFIG_NAMES:
            if (d / name).is_file():
                try:
                    model_config_from_file(d / name)
                except Exception as e:  # unreadable or not ours: keep looking
                    _log.debug("not a run config: %s (%s)", d / name, e)
                    continue
                return d / name
    return None


def model_config_from_file(path: str | Path) -> ModelConfig:
    """The ``model`` section of a run config (YAML or JSON; a file holding just the section works too)."""
    import yaml

    from protclip.config import from_dict

    path = Path(path)
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with a `model` section")
    section = raw.get("model", raw if "protein_model" in raw else None)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: no `model` section")
    return from_dict(ModelConfig, section, _path=f"{path}:model")
