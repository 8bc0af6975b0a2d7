"""Minimal Gene Ontology OBO reader and true-path-rule label propagation (for GO multi-label tasks).

DeepFRI's GO labels are already propagated; raw annotation files are not. With an ontology, a protein
annotated with a term is also annotated with every ancestor over ``is_a`` and ``part_of``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protclip.data.formats.core import FormatError


@dataclass
class GoTerm:
    id: str
    name: str = ""
    namespace: str = ""
    is_a: list[str] = field(default_factory=list)
    part_of: list[str] = field(default_factory=list)
    alt_ids: list[str] = field(default_factory=list)
    obsolete: bool = False


def read_obo(path: str | Path) -> dict[str, GoTerm]:
    """``[Term]`` stanzas of an OBO 1.2 file, by id (alt ids are listed on the term, not keyed)."""
    path = Path(path)
    terms: dict[str, GoTerm] = {}
    cur: GoTerm | None = None
    in_term = False
    with path.open("r", encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if line.startswith("["):
                if cur is not None:
                    terms[cur.id] = cur
                cur, in_term = None, line == "[Term]"
                continue
            if not in_term or not line or line.startswith("!"):
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise FormatError(path, f"line {lineno}", "tag", f"expected 'tag: value', got {line!r}")
            value = value.split(" ! ")[0].strip()
            if key == "id":
                cur = GoTerm(id=value)
            elif cur is None:
                raise FormatError(path, f"line {lineno}", key, "tag before the stanza's 'id'")
            elif key == "name":
                cur.name = value
            elif key == "namespace":
                cur.namespace = value
            elif key == "is_a":
                cur.is_a.append(value.split()[0])
            elif key == "relationship" and value.startswith("part_of "):
                cur.part_of.append(value.split()[1])
            elif key == "alt_id":
                cur.alt_ids.append(value)
            elif key == "is_obsolete":
                cur.obsolete = value == "true"
    if cur is not None:
        terms[cur.id] = cur
    if not terms:
        raise FormatError(path, "file", "[Term]", "no GO terms found")
    return terms


def ancestors(terms: dict[str, GoTerm], term_id: str) -> set[str]:
    """All ancestors over is_a and part_of (the term itself excluded); parents outside ``terms`` are kept."""
    seen: set[str] = set()
    stack = [term_id]
    while stack:
        t = terms.get(stack.pop())
        if t is None:
            continue
        for parent in t.is_a + t.part_of:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def propagate(labels: list[str], terms: dict[str, GoTerm]) -> list[str]:
    """Close a label set upwards (true-path rule); sorted, duplicates removed. Alt ids map to their term."""
    alt = {a: t.id for t in terms.values() for a in t.alt_ids}
    out: set[str] = set()
    for lab in labels:
        lab = alt.get(lab, lab)
        out.add(lab)
        out |= ancestors(terms, lab)
    return sorted(out)
