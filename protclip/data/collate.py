"""Collation: a batch of ProtAnno rows -> the model's inputs, with dynamic padding (method.md §4.8 step 1).

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
from typing import Any

import numpy as np

from protclip.data.tokenizers import ESM_MASK, ESM_PAD, ESM_STANDARD_AA_IDS, ProteinTokenizer
from protclip.model import masking
from protclip.model.config import LossConfig, ModelConfig

PROPERTIES = ("protein_name", "function", "subcellular_location", "similarity")
#: Header of each property inside ``text``; an absent property is encoded as its bare header ("FUNCTION:").
HEADERS = {
    "protein_name": "PROTEIN NAME:",
    "function": "FUNCTION:",
    "subcellular_location": "SUBCELLULAR LOCATION:",
    "similarity": "SIMILARITY:",
}
_NEEDED = ("sequence", "text")


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
        self,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig | None = None,
        train: bool = True,
        seed: int = 0,
        as_numpy: bool = False,
    ) -> None:
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg or LossConfig()
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
        return cols + (["features"] if self.loss_cfg.span_source == "features" else [])

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
                text_tokenizer_dir(self.model_cfg.text_model, self.model_cfg.text_tokenizer)
            )
        return self._text_tok

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
        mc, lc = self.model_cfg, self.loss_cfg
        released = mc.mode == "released"
        crop_rng = rng if (self.train and not released) else None
        tok = self.protein_tokenizer
        ids, mlm_ids, mlm_lab, span_ids, span_lab = [], [], [], [], []
        for r in rows:
            seq = str(r["sequence"])
            if not seq:
                raise ValueError(f"collate: row {r.get('accession', '?')} has an empty sequence")
            start = masking.crop_start(len(seq), mc.max_residues, crop_rng)
            res = tok.encode_residues(seq[start : start + mc.max_residues])
            n = len(res)
            full = np.concatenate([[tok.cls_id], res, [tok.eos_id]]).astype(np.int64)
            ids.append(full)
            pos = masking.mlm_positions(n, lc.mlm_probability, rng, exact=not released) + 1
            m_ids, m_lab = masking.apply_mask(full, pos, ESM_MASK, rng, lc.mlm_replace, ESM_STANDARD_AA_IDS)
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
            area = masking.released_fragment_mask(residues, lc.released_span_range, rng)
            out["span_input_ids"] = np.where(area, ESM_MASK, input_ids)
            out["span_labels"] = np.where(area, input_ids, masking.IGNORE_INDEX)
        else:
            out["span_input_ids"] = _pad(span_ids, ESM_PAD)
            out["span_labels"] = _pad(span_lab, masking.IGNORE_INDEX)
        return out

    def _span_positions(
        self, row: Mapping[str, Any], start: int, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        lc = self.loss_cfg
        feats = row.get("features")
        if lc.span_source == "features" and feats is not None and len(feats) > 0:
            spans = masking.feature_spans(
                feats, start, n, set(lc.span_feature_types), lc.span_min, lc.span_max, lc.span_fraction, rng
            )
        else:
            spans = masking.random_spans(n, lc.span_min, lc.span_max, lc.span_fraction, rng)
        return masking.spans_to_positions(spans)

    # ------------------------------------------------------------------------------------------ texts
    def _texts(self, rows: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        mc, tok = self.model_cfg, self.text_tokenizer
        texts = [str(r["text"]) for r in rows]
        full = tok(
            texts, truncation=True, max_length=mc.max_text_length, padding="longest", return_tensors="np"
        )
        subs, present = [], []
        for r in rows:
            s, p = subtexts_of(r)
            subs.extend(s)
            present.append(p)
        sub = tok(
            subs, truncation=True, max_length=mc.max_subtext_length, padding="longest", return_tensors="np"
        )
        b, k = len(rows), len(PROPERTIES)
        return {
            "text_input_ids": full["input_ids"].astype(np.int64),
            "text_attention_mask": full["attention_mask"].astype(np.int64),
            "subtext_input_ids": sub["input_ids"].astype(np.int64).reshape(b, k, -1),
            "subtext_attention_mask": sub["attention_mask"].astype(np.int64).reshape(b, k, -1),
            "property_present": np.asarray(present, dtype=np.int64),
        }
