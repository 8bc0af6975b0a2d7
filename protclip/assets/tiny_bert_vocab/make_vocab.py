"""One-off builder of the committed tiny BERT vocab (run once; the output ``vocab.txt`` is the fixture).

Why a committed file: WordPiece training is not deterministic in its id assignment, so tests must not train one.
This script is deterministic instead: BERT specials, every character seen (plus its ``##`` continuation form),
then the most frequent lower-cased words of real UniProt text (the shared samples' DE/CC lines and the ProtCLIP
aligned-data sample), ties broken alphabetically.

    .venv/bin/python protclip/assets/tiny_bert_vocab/make_vocab.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from protclip.paths import shared_data_dir

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
N_WORDS = 1500


def corpus() -> list[str]:
    """Real UniProt text: flat-file DE and CC lines plus the ProtCLIP sample texts."""
    samples = shared_data_dir() / "uniprot_samples"
    lines = [
        line[5:]
        for line in (samples / "uniprot_samples.dat").read_text().splitlines()
        if line.startswith(("DE   ", "CC   "))
    ]
    with open(samples / "protclip_aligned_data_sample.jsonl") as f:
        lines += [json.loads(row)["text"] for row in f if row.strip()]
    return lines


def main() -> None:
    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()  # what BertTokenizer does before WordPiece
    words: Counter[str] = Counter()
    chars: set[str] = set()
    for line in corpus():
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            words[w] += 1
            chars.update(w)
    vocab = list(SPECIALS)
    vocab += sorted(chars)
    vocab += ["##" + c for c in sorted(chars)]
    seen = set(vocab)
    ranked = sorted((w for w in words if len(w) > 1 and w not in seen), key=lambda w: (-words[w], w))
    vocab += ranked[:N_WORDS]
    out = Path(__file__).with_name("vocab.txt")
    out.write_text("\n".join(vocab) + "\n")
    print(f"wrote {len(vocab)} tokens to {out}")


if __name__ == "__main__":
    main()
