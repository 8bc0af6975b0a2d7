"""Tokenizers of the two towers, built without any download.

ESM-2's alphabet is fixed (33 tokens), so proteins are tokenized by a table lookup that matches HF's
``EsmTokenizer`` id for id (tested), and an ``EsmTokenizer`` can be written from the same list for export.
Text uses HF's BERT tokenizer loaded from a directory holding ``vocab.txt`` (a hub id works outside tests).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np

from protclip.sources import RANDOM, TINY_BERT_VOCAB_DIR, resolve_source

#: ESM-2 vocabulary in id order (fair-esm / HF ``facebook/esm2_*``).
ESM_VOCAB: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
ESM_CLS, ESM_PAD, ESM_EOS, ESM_UNK, ESM_MASK = 0, 1, 2, 3, 32
#: ids of the 20 standard amino acids (L..C), the pool for random replacement in 80/10/10 masking
ESM_STANDARD_AA_IDS = np.arange(4, 24, dtype=np.int64)


class ProteinTokenizer:
    """Fast, picklable ESM-2 tokenizer: ``encode("MKT")`` -> ``[<cls>, M, K, T, <eos>]`` as int64 ids."""

    vocab = ESM_VOCAB
    cls_id, pad_id, eos_id, unk_id, mask_id = ESM_CLS, ESM_PAD, ESM_EOS, ESM_UNK, ESM_MASK

    def __init__(self) -> None:
        table = np.full(256, ESM_UNK, dtype=np.int64)
        for i, tok in enumerate(ESM_VOCAB):
            if len(tok) == 1:
                table[ord(tok)] = i
                table[ord(tok.lower())] = i  # lower-case residues are the same residues
        self._table = table

    def encode_residues(self, sequence: str) -> np.ndarray:
        """Residue ids without specials; characters outside the alphabet become <unk>."""
        raw = np.frombuffer(sequence.encode("latin-1", errors="replace"), dtype=np.uint8)
        return self._table[raw]

    def encode(self, sequence: str) -> np.ndarray:
        return np.concatenate([[ESM_CLS], self.encode_residues(sequence), [ESM_EOS]]).astype(np.int64)

    def decode(self, ids) -> str:
        return "".join(ESM_VOCAB[int(i)] for i in ids if int(i) not in (ESM_CLS, ESM_PAD, ESM_EOS))

    @staticmethod
    def write_vocab(directory: str | Path) -> Path:
        """Write ESM-2's ``vocab.txt`` (one token per line) into ``directory``."""
        path = Path(directory) / "vocab.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(ESM_VOCAB) + "\n")
        return path

    def to_hf(self):
        """An ``EsmTokenizer`` over the same alphabet (for ``save_pretrained`` next to an exported tower)."""
        from transformers import EsmTokenizer

        with tempfile.TemporaryDirectory() as d:
            return EsmTokenizer(vocab_file=str(self.write_vocab(d)))


def text_tokenizer_dir(text_model: str, text_tokenizer: str = "") -> str:
    """Where the text vocab comes from: explicit ``text_tokenizer``, else the text model source."""
    if text_tokenizer:
        return resolve_source(text_tokenizer)
    if text_model == RANDOM:
        return str(TINY_BERT_VOCAB_DIR)
    return resolve_source(text_model)


@functools.lru_cache(maxsize=4)
def load_text_tokenizer(source: str):
    """BERT tokenizer from a directory with ``vocab.txt`` (or a hub id outside tests).

    ``BertTokenizer(vocab_file=...)`` silently ignores the file in transformers 5, hence
    ``from_pretrained`` on the directory.
    """
    from transformers import BertTokenizer

    if (
        Path(source).is_dir()
        and not (Path(source) / "vocab.txt").is_file()
        and not (Path(source) / "tokenizer.json").is_file()
    ):
        raise FileNotFoundError(f"text tokenizer dir {source} has neither vocab.txt nor tokenizer.json")
    tok = BertTokenizer.from_pretrained(source)
    if tok.cls_token_id is None or tok.sep_token_id is None or tok.pad_token_id is None:
        raise ValueError(f"text tokenizer from {source} lacks [CLS]/[SEP]/[PAD]")
    return tok
