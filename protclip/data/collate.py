"""Collation: a batch of ProtAnno rows -> the model's inputs, with dynamic padding (each batch padded to its own
longest sequence).

Pure and picklable (Ray Data workers call it later): tokenizers are built lazily on first use, randomness comes
from a numpy generator seeded per batch, so the same rows with the same seed give the same tensors anywhere.
Without an explicit seed, the seed is derived from (collator seed, epoch, the rows' accessions/sequences):
stateless, so a batch is reproducible on resume and on any number of workers.

Output keys (int64 tensors; ``as_numpy=True`` gives numpy arrays):
    protein_input_ids, protein_attention_mask   [B, Lp]   cropped to max_protein_length
    mlm_input_ids, mlm_labels                    [B, Lp]   labels -100 except masked residues
    span_input_ids, span_labels                  [B, Lp]   BSR span-masked copy
    text_input_ids, text_attention_mask          [B, Lt]
    subtext_input_ids, subtext_attention_mask    [B, 4, Ls] property order of PROPERTIES
    property_present                             [B, 4]    1 where the row has the property (else placeholder)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from protclip.data import masking
from protclip.data.tokenizers import ESM_MASK, ESM_PAD, ESM_STANDARD_AA_IDS, ProteinTokenizer

PROPERTIES = ("protein_name", "function", "subcellular_location", "similarity")
#: Header of each property inside ``text``; an absent property is encoded as its bare header ("FUNCTION:").
HEADERS = {
    "protein_name": "PROTEIN NAME:",
    "function": "FUNCTION:",
    "subcellular_location": "SUBCELLULAR LOCATION:",
    "similarity": "SIMILARITY:",
}
_NEEDED = ("sequence", "text")


@dataclass(kw_only=True)
class CollateConfig:
    """Everything collation reads: lengths, the text vocab's source, and the masking that feeds MLM and BSR.

    A derived view, never written in a run config: ``protclip.model.config.collate_config`` builds it from the
    data section (lengths), the model section (mode, text vocab) and the loss section (masking), so collation
    never depends on the model package. Defaults equal those sections' (tested).
    """

    # "paper" = random crop in training, exact MLM count, per-sequence BSR spans; "released" = the released
    # code's N-terminal crop, Bernoulli MLM and batch-wide drifting span sampler
    mode: Literal["paper", "released"] = "paper"
    # text vocab source: ``text_tokenizer`` if set, else ``text_model`` (tokenizers.text_tokenizer_dir)
    text_model: str = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract"
    text_tokenizer: str = ""
    max_protein_length: int = 1024  # tokens incl. <cls>/<eos>; longer sequences are cropped
    max_text_length: int = 512  # full text tokens incl. [CLS]/[SEP] (truncated)
    max_subtext_length: int = 128  # per property sub-text tokens (truncated)
    mlm_probability: float = 0.15  # share of residues masked for MLM
    mlm_replace: Literal["mask", "bert"] = "mask"  # "bert" = 80% <mask> / 10% random aa / 10% kept
    span_min: int = 5  # BSR span length range (inclusive), paper mode
    span_max: int = 10
    span_fraction: float = 0.15  # BSR spans cover at least this share of the residues
    span_source: Literal["random", "features"] = "random"  # "features": UniProt positional features first
    span_feature_types: list[str] = field(default_factory=lambda: list(masking.DEFAULT_SPAN_FEATURE_TYPES))
    released_span_range: int = 10  # released mode: starting span range of the drifting sampler

    def __post_init__(self) -> None:
        if self.mode not in ("paper", "released"):
            raise ValueError(f"collate: mode must be 'paper' or 'released', got {self.mode!r}")
        if self.mlm_replace not in ("mask", "bert"):
            raise ValueError(f"collate: mlm_replace must be 'mask' or 'bert', got {self.mlm_replace!r}")
        if self.span_source not in ("random", "features"):
            raise ValueError(f"collate: span_source must be 'random' or 'features', got {self.span_source!r}")
        if self.max_protein_length < 3:
            raise ValueError(f"collate: max_protein_length must be >= 3, got {self.max_protein_length}")
        if not 1 <= self.span_min <= self.span_max:
            raise ValueError(f"collate: need 1 <= span_min <= span_max, got {self.span_min}..{self.span_max}")

    @property
    def max_residues(self) -> int:
        """Residues kept per protein after cropping (the length budget minus <cls> and <eos>)."""
        return self.max_protein_length - 2


def split_properties(text: str) -> dict[str, str]:
    """Sub-texts by header search, for rows without ``property_offsets`` (the released data's own format).

    Each header's first occurrence starts a sub-text that runs to the next header found; as the released code,
    a header string quoted inside an earlier field would mis-split (rows from our parser carry offsets instead).
    """
    found = []
    for prop in PROPERTIES:
        pos = text.find(HEADERS[prop])
        if pos >= 0:
            found.append((pos, prop))
    found.sort()
    out = {}
    for i, (pos, prop) in enumerate(found):
        end = found[i + 1][0] if i + 1 < len(found) else len(text)
        out[prop] = text[pos:end].strip()
    return out


def subtexts_of(row: Mapping[str, Any]) -> tuple[list[str], list[bool]]:
    """The four property sub-texts of a row in PROPERTIES order, placeholders for absent ones."""
    text = row["text"]
    offsets = row.get("property_offsets")
    if offsets is None:
        spans = split_properties(text)
    else:
        spans = {}
        for o in offsets:
            prop, start, end = o["property"], int(o["start"]), int(o["end"])
            if prop not in HEADERS or not 0 <= start < end <= len(text):
                raise ValueError(
                    f"row {row.get('accession', '?')}: bad property_offsets entry {dict(o)} for a text of "
                    f"{len(text)} characters"
                )
            spans[prop] = text[start:end].strip()
    present = [p in spans and bool(spans[p]) for p in PROPERTIES]
    return [spans[p] if ok else HEADERS[p] for p, ok in zip(PROPERTIES, present, strict=True)], present


def _rows(batch: Any) -> list[Mapping[str, Any]]:
    """Accept a list of row dicts, a dict of columns (Ray ``numpy`` batches) or a pandas DataFrame."""
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return batch.to_dict("records")
    if isinstance(batch, Mapping):
        missing = [c for c in _NEEDED if c not in batch]
        if missing:
            raise KeyError(f"collate: batch lacks column(s) {missing}; has {sorted(batch)}")
        n = len(batch["sequence"])
        return [{k: v[i] for k, v in batch.items()} for i in range(n)]
    rows = list(batch)
    for i, r in enumerate(rows):
        missing = [c for c in _NEEDED if c not in r]
        if missing:
            raise KeyError(f"collate: row {i} ({r.get('accession', '?')}) lacks field(s) {missing}")
    return rows


def _pad(seqs: Sequence[np.ndarray], value: int) -> np.ndarray:
    out = np.full((len(seqs), max(len(s) for s in seqs)), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


class ProtCLIPCollator:
    """``collator(rows, seed=None) -> dict`` of padded model inputs; see the module docstring for the keys."""

    def __init__(
        self, cfg: CollateConfig, train: bool = True, seed: int = 0, as_numpy: bool = False
    ) -> None:
        self.cfg = cfg
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.as_numpy = as_numpy
        self._protein_tok: ProteinTokenizer | None = None
        self._text_tok = None

    def __getstate__(self) -> dict[str, Any]:  # ship configs, not tokenizers, to workers
        state = self.__dict__.copy()
        state["_protein_tok"] = state["_text_tok"] = None
        return state

    @property
    def required_columns(self) -> list[str]:
        """Row fields this collator reads (``features`` only when spans come from positional features)."""
        cols = ["accession", "sequence", "text", "property_offsets"]
        return cols + (["features"] if self.cfg.span_source == "features" else [])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def protein_tokenizer(self) -> ProteinTokenizer:
        if self._protein_tok is None:
            self._protein_tok = ProteinTokenizer()
        return self._protein_tok

    @property
    def text_tokenizer(self):
        if self._text_tok is None:
            from protclip.data.tokenizers import load_text_tokenizer, text_tokenizer_dir

            self._text_tok = load_text_tokenizer(
                text_tokenizer_dir(self.cfg.text_model, self.cfg.text_tokenizer)
            )
        return self._text_tok

    def text_token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Full-text tokens of each text after truncation (what the text budget of packed batching counts)."""
        enc = self.text_tokenizer(list(texts), truncation=True, max_length=self.cfg.max_text_length)
        return np.asarray([len(x) for x in enc["input_ids"]], dtype=np.int64)

    def batch_seed(self, rows: Iterable[Mapping[str, Any]]) -> int:
        h = hashlib.blake2b(f"{self.seed}|{self.epoch}".encode(), digest_size=8)
        for r in rows:
            h.update(str(r.get("accession") or r["sequence"]).encode())
            h.update(b"\0")
        return int.from_bytes(h.digest(), "little")

    def __call__(self, batch: Any, seed: int | None = None) -> dict[str, Any]:
        rows = _rows(batch)
        if not rows:
            raise ValueError("collate: empty batch")
        rng = np.random.default_rng(self.batch_seed(rows) if seed is None else seed)
        out = self._proteins(rows, rng)
        out.update(self._texts(rows))
        if self.as_numpy:
            return out
        import torch

        return {k: torch.from_numpy(v) for k, v in out.items()}

    # ------------------------------------------------------------------------------------------ proteins
    def _proteins(self, rows: list[Mapping[str, Any]], rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.cfg
        released = c.mode == "released"
        crop_rng = rng if (self.train and not released) else None
        tok = self.protein_tokenizer
        ids, mlm_ids, mlm_lab, span_ids, span_lab = [], [], [], [], []
        for r in rows:
            seq = str(r["sequence"])
            if not seq:
                raise ValueError(f"collate: row {r.get('accession', '?')} has an empty sequence")
            start = masking.crop_start(len(seq), c.max_residues, crop_rng)
            res = tok.encode_residues(seq[start : start + c.max_residues])
            n = len(res)
            full = np.concatenate([[tok.cls_id], res, [tok.eos_id]]).astype(np.int64)
            ids.append(full)
            pos = masking.mlm_positions(n, c.mlm_probability, rng, exact=not released) + 1
            m_ids, m_lab = masking.apply_mask(full, pos, ESM_MASK, rng, c.mlm_replace, ESM_STANDARD_AA_IDS)
            mlm_ids.append(m_ids)
            mlm_lab.append(m_lab)
            if not released:
                s_ids, s_lab = masking.apply_mask(
                    full, self._span_positions(r, start, n, rng) + 1, ESM_MASK, rng
                )
                span_ids.append(s_ids)
                span_lab.append(s_lab)
        input_ids = _pad(ids, ESM_PAD)
        out = {
            "protein_input_ids": input_ids,
            "protein_attention_mask": (input_ids != ESM_PAD).astype(np.int64),
            "mlm_input_ids": _pad(mlm_ids, ESM_PAD),
            "mlm_labels": _pad(mlm_lab, masking.IGNORE_INDEX),
        }
        if released:
            residues = (input_ids != ESM_PAD) & (input_ids != tok.cls_id) & (input_ids != tok.eos_id)
            area = masking.released_fragment_mask(residues, c.released_span_range, rng)
            out["span_input_ids"] = np.where(area, ESM_MASK, input_ids)
            out["span_labels"] = np.where(area, input_ids, masking.IGNORE_INDEX)
        else:
            out["span_input_ids"] = _pad(span_ids, ESM_PAD)
            out["span_labels"] = _pad(span_lab, masking.IGNORE_INDEX)
        return out

    def _span_positions(
        self, row: Mapping[str, Any], start: int, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        c = self.cfg
        feats = row.get("features")
        if c.span_source == "features" and feats is not None and len(feats) > 0:
            spans = masking.feature_spans(
                feats, start, n, set(c.span_feature_types), c.span_min, c.span_max, c.span_fraction, rng
            )
        else:
            spans = masking.random_spans(n, c.span_min, c.span_max, c.span_fraction, rng)
        return masking.spans_to_positions(spans)

    # ------------------------------------------------------------------------------------------ texts
    def _texts(self, rows: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        c, tok = self.cfg, self.text_tokenizer
        texts = [str(r["text"]) for r in rows]
        full = tok(
            texts, truncation=True, max_length=c.max_text_length, padding="longest", return_tensors="np"
        )
        subs, present = [], []
        for r in rows:
            s, p = subtexts_of(r)
            subs.extend(s)
            present.append(p)
        sub = tok(
            subs, truncation=True, max_length=c.max_subtext_length, padding="longest", return_tensors="np"
        )
        b, k = len(rows), len(PROPERTIES)
        return {
            "text_input_ids": full["input_ids"].astype(np.int64),
            "text_attention_mask": full["attention_mask"].astype(np.int64),
            "subtext_input_ids": sub["input_ids"].astype(np.int64).reshape(b, k, -1),
            "subtext_attention_mask": sub["attention_mask"].astype(np.int64).reshape(b, k, -1),
            "property_present": np.asarray(present, dtype=np.int64),
        }


# ---------------------------------------------------------------------------------------------- packing
#: key whose presence marks a packed batch (padding-free: one row of concatenated sequences per micro-batch)
PACKED_MARKER = "protein_cu_seqlens"
#: packed groups: (prefix of the cu_seqlens/position_ids keys, attention-mask key, keys packed with that mask)
_PACK_GROUPS = (
    ("protein", "protein_attention_mask",
     ("protein_input_ids", "mlm_input_ids", "mlm_labels", "span_input_ids", "span_labels")),
    ("text", "text_attention_mask", ("text_input_ids",)),
    ("subtext", "subtext_attention_mask", ("subtext_input_ids",)),
)  # fmt: skip


def is_packed(batch: Mapping[str, Any]) -> bool:
    return PACKED_MARKER in batch


def batch_rows(batch: Mapping[str, Any]) -> int:
    """Pairs (proteins) in a micro-batch, padded ``[B, L]`` or packed (``len(cu_seqlens) - 1``)."""
    if is_packed(batch):
        return int(batch[PACKED_MARKER].shape[0]) - 1
    return int(batch["protein_input_ids"].shape[0])


def pack_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A padded collated batch -> the same sequences packed end to end, padding removed.

    Each group (protein with its MLM/span copies, text, sub-texts in ``[B * 4]`` row-major order) becomes one row
    ``[1, T]`` plus ``<group>_cu_seqlens`` ``[n + 1]`` (sequence boundaries) and ``<group>_position_ids``
    ``[1, T]`` (restarting at 0 for every sequence); ``*_attention_mask`` becomes ones ``[1, T]``. Masks, spans
    and crops are the padded batch's own, so a packed and a padded batch of the same rows and seed differ only
    in layout. Right padding is assumed (what the collator produces). numpy in, numpy out; torch in, torch out.
    """
    as_torch = any(hasattr(v, "numpy") for v in batch.values())
    arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in batch.items()}
    out: dict[str, np.ndarray] = {k: v for k, v in arrays.items() if k == "property_present"}
    for prefix, mask_key, keys in _PACK_GROUPS:
        if mask_key not in arrays:
            continue
        mask = arrays[mask_key].astype(bool)
        mask = mask.reshape(-1, mask.shape[-1])
        lens = mask.sum(-1).astype(np.int64)
        if (lens < 1).any():
            raise ValueError(f"pack_batch: a sequence of {mask_key} has no tokens")
        if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lens[:, None]):
            raise ValueError(f"pack_batch: {mask_key} is not right-padded")
        for k in keys:
            if k in arrays:
                out[k] = arrays[k].reshape(mask.shape)[mask][None, :]
        total = int(lens.sum())
        out[mask_key] = np.ones((1, total), dtype=np.int64)
        cu = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=cu[1:])
        out[f"{prefix}_cu_seqlens"] = cu
        out[f"{prefix}_position_ids"] = (np.arange(total) - np.repeat(cu[:-1], lens))[None, :].astype(np.int64)
    if as_torch:
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
    return out
