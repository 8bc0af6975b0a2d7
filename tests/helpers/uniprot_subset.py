"""Small real subsets of the UniProt corpus for tests: the first ``n`` entries, written as a plain ``.dat``."""

from __future__ import annotations

import gzip
from pathlib import Path


def write_corpus_subset(shared_data: Path, n: int, out: Path) -> Path:
    """Copy the first ``n`` entries of ``uniprot_corpus.dat.gz`` verbatim into ``out`` (a ``.dat`` file)."""
    kept: list[str] = []
    entry: list[str] = []
    with gzip.open(shared_data / "uniprot_corpus" / "uniprot_corpus.dat.gz", "rt") as f:
        for line in f:
            entry.append(line)
            if line.startswith("//"):
                kept.append("".join(entry))
                entry = []
                if len(kept) == n:
                    break
    out.write_text("".join(kept))
    return out
