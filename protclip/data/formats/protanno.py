"""ProtAnno rows as a labelled evaluation set: subcellular location of held-out entries -> DeepLoc's 10 classes.

Why: a zero-shot location test on the pre-training corpus's own held-out clusters needs no extra benchmark file
and scores proteins whose homologues the model never trained on. UniProt's SUBCELLULAR LOCATION text names
locations with a controlled vocabulary ("Cytoplasm, cytosol {ECO:...}; Peripheral membrane protein."); each
location statement's head (before the first comma, evidence and topology stripped) is mapped to a DeepLoc class.
An entry gets a label only when all its mapped statements agree on one class: multi-location entries and
entries with only unmapped locations ("Membrane", "Cell junction") are left out and counted, never guessed.
"""

from __future__ import annotations

import re
from collections import Counter

from protclip.data.formats.core import LabeledSequences

__all__ = ["DEEPLOC_CLASSES", "location_classes", "location_label", "protanno_locations"]

#: DeepLoc 1.0's classes, in its own spelling
DEEPLOC_CLASSES = (
    "Nucleus", "Cytoplasm", "Extracellular", "Mitochondrion", "Cell.membrane", "Endoplasmic.reticulum",
    "Plastid", "Golgi.apparatus", "Lysosome/Vacuole", "Peroxisome",
)  # fmt: skip
# (head prefix, exact head?) -> class; checked in order, first match wins
_RULES: tuple[tuple[str, bool, str], ...] = (
    ("Nucleus", False, "Nucleus"),
    ("Cytoplasm", True, "Cytoplasm"),
    ("Secreted", False, "Extracellular"),
    ("Mitochondrion", False, "Mitochondrion"),
    ("Cell membrane", True, "Cell.membrane"),
    ("Endoplasmic reticulum", False, "Endoplasmic.reticulum"),
    ("Plastid", False, "Plastid"),
    ("Golgi apparatus", False, "Golgi.apparatus"),
    ("Lysosome", False, "Lysosome/Vacuole"),
    ("Vacuole", False, "Lysosome/Vacuole"),
    ("Peroxisome", False, "Peroxisome"),
)
_EVIDENCE = re.compile(r"\s*\{[^}]*\}")
_ISOFORM = re.compile(r"^\[[^\]]*\]:\s*")
_QUALIFIER = re.compile(r"\s*\((?:Probable|By similarity|Potential)\)", re.IGNORECASE)
_HEADER = "SUBCELLULAR LOCATION:"


def _statements(text: str) -> list[str]:
    """The location statements of a SUBCELLULAR LOCATION text (before any ``Note=``), evidence stripped."""
    body = text.strip()
    if body.startswith(_HEADER):
        body = body[len(_HEADER):]
    body = _EVIDENCE.sub("", body.split("Note=", 1)[0])
    out = []
    for stmt in body.split(". "):
        stmt = _QUALIFIER.sub("", _ISOFORM.sub("", stmt.strip().rstrip(".")))
        if stmt:
            out.append(stmt.split(";", 1)[0].strip())  # drop topology ("; Single-pass membrane protein")
    return out


def location_classes(text: str | None) -> set[str]:
    """The DeepLoc classes named by a ProtAnno ``subcellular_location`` text (empty if none maps)."""
    if not text:
        return set()
    found = set()
    for stmt in _statements(text):
        head = stmt.split(",", 1)[0].strip()
        for prefix, exact, cls in _RULES:
            if (head == prefix) if exact else head.startswith(prefix):
                found.add(cls)
                break
    return found


def location_label(text: str | None) -> tuple[str | None, str]:
    """(class, "") when the text maps to exactly one DeepLoc class, else (None, reason it was left out)."""
    if not text:
        return None, "no subcellular location"
    classes = location_classes(text)
    if not classes:
        return None, "location outside the DeepLoc classes"
    if len(classes) > 1:
        return None, "several DeepLoc classes"
    return next(iter(classes)), ""


def protanno_locations(ids: list[str], sequences: list[str], locations: list[str | None],
                       source: str) -> LabeledSequences:
    """Single-label location records of the ProtAnno rows that map to exactly one class; the rest counted."""
    keep_ids, keep_seqs, labels = [], [], []
    dropped: Counter[str] = Counter()
    for acc, seq, loc in zip(ids, sequences, locations, strict=True):
        label, reason = location_label(loc)
        if label is None:
            dropped[reason] += 1
            continue
        keep_ids.append(acc)
        keep_seqs.append(seq)
        labels.append(label)
    return LabeledSequences(ids=keep_ids, sequences=keep_seqs, labels=labels, task_type="single_label",
                            source=source, dropped=dict(dropped))
