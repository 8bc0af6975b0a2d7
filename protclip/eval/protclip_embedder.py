"""An :class:`~protclip.eval.embedder.Embedder` for a loaded ProtCLIP model (loading it from a checkpoint, export
or MLflow run is :mod:`protclip.pretrained`'s job).

Which protein vector a suite gets matters: retrieval and zero-shot compare proteins with texts, so they need the
*joint* space (``encode_protein``: pooled, projected, L2-normalised, exactly as trained); linear probes, fine-tune
heads and PPI follow the usual protocol of a *tower* embedding (mean of the protein tower's last layer over
residues, no projection). ``protein_space`` picks one; :meth:`ProtCLIPEmbedder.with_space` shares the loaded model.
Mutation effect uses the MLM head on the protein tower (masked marginals), through the tested
:class:`~protclip.eval.embedder.HFProteinEmbedder` machinery (deterministic crops, windows around mutations).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from protclip.data.batching import length_batches
from protclip.data.config import DataConfig
from protclip.dist import resolve_device
from protclip.eval.embedder import HFProteinEmbedder
from protclip.model.protclip import ProtCLIPModel

__all__ = ["ProtCLIPEmbedder"]

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
        data_cfg: DataConfig | None = None,
    ) -> None:
        """``text_tokenizer``: an already loaded BERT tokenizer (needed when the model was loaded from a temporary
        copy that is gone by now); default: loaded on first use from the model config's text tokenizer source.
        ``data_cfg``: the run's data section, whose protein and text lengths inputs are cropped to, as in
        training (``protclip.pretrained.load_model`` finds it); default: the data section's defaults."""
        from protclip.data.tokenizers import ProteinTokenizer

        if protein_space not in SPACES:
            raise ValueError(f"protein_space must be one of {SPACES}, got {protein_space!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.protein_space = protein_space
        self.max_tokens_per_batch = max_tokens_per_batch
        lengths = data_cfg or DataConfig()
        self.max_text_length = lengths.max_text_length
        self.tower = HFProteinEmbedder(
            _EsmWithMLMHead(model.protein_tower, model.mlm_head),
            ProteinTokenizer().to_hf(),
            max_length=lengths.max_protein_length,
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

    @property
    def logit_scale(self) -> float:
        """The model's GC scale 1/temperature (clamped as in training): scores the GC loss of eval pairs."""
        return float(self.model.scales()[0].detach())

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
        tok, max_len = self.text_tokenizer, self.max_text_length
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
        """The BERT tokenizer the text tower was trained with (``text_tokenizer`` or the text model source)."""
        if self._text_tok is None:
            from protclip.data.tokenizers import load_text_tokenizer, text_tokenizer_dir

            cfg = self.model.cfg
            self._text_tok = load_text_tokenizer(text_tokenizer_dir(cfg.text_model, cfg.text_tokenizer))
        return self._text_tok
