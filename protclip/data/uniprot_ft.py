"""FT lines (positional features) in both syntaxes, plus the shared line-unwrapping rule.

Current syntax (2019-12 onwards)::

    FT   DOMAIN          10..100
    FT                   /note="Some long note that is
    FT                   wrapped"
    FT                   /evidence="ECO:0000255|PROSITE-ProRule:PRU00159"

Pre-2019 column syntax::

    FT   DOMAIN       10    100       Note text that is
    FT                                wrapped.
    FT                                /FTId=PRO_0000012693.

A feature line has its key at column 6; the current syntax has exactly two tokens (key, location), the old one
at least three (key, from, to[, description]), which tells them apart without relying on column widths.

Speed: the whole FT block is handled as one string: continuation prefixes are replaced by a tab in C, the
block is split once per feature, and qualifiers are split on ``"<TAB>/``; no per-line Python loop.
"""

from __future__ import annotations

import re

from protclip.data.uniprot_records import Feature, _qualifier

_HYPHEN_WRAP = re.compile(r"(?<! )-\n")
_HYPHEN_TAB = re.compile(r"(?<! )-\t")
_SEQ_NOTE_TYPES = frozenset({"VAR_SEQ", "VARSPLIC", "VARIANT", "CONFLICT"})
_OLD_CONT = "\nFT" + " " * 32  # pre-2019 continuation: text at column 35
_NEW_CONT = "\nFT" + " " * 19  # current continuation / qualifier: text at column 22


class FeatureFormatError(ValueError):
    """An FT line that cannot be understood."""


def join_wrapped(parts: list[str]) -> str:
    """Undo UniProt's line wrapping: lines are joined with a space, except after a line-final hyphen.

    UniProt's writer (``FFLineWrapper``) wraps either at a space or right after a ``-`` inside a word, and never
    at the space of ``"- "``; so a line ending in ``-`` (not `` -``) continues the same word.
    """
    if len(parts) == 1:
        return parts[0]
    s = "\n".join(parts)
    if "-\n" in s:
        s = _HYPHEN_WRAP.sub("-", s)
    return s.replace("\n", " ")


def _unwrap_tabs(s: str) -> str:
    """Same rule as :func:`join_wrapped` for a value whose line breaks were turned into tabs."""
    if "-\t" in s:
        s = _HYPHEN_TAB.sub("-", s)
    return s.replace("\t", " ")


def _pos(tok: str) -> tuple[int | None, str]:
    if tok.isdigit():
        return int(tok), ""
    fuzzy = ""
    if tok and tok[0] in "<>?":
        fuzzy, tok = tok[0], tok[1:]
        if not tok:
            return None, fuzzy
        if tok.isdigit():
            return int(tok), fuzzy
    raise FeatureFormatError(f"bad feature position {fuzzy + tok!r}")


def _fix_seq_note(note: str) -> str:
    """Remove the spaces that unwrapping put inside long sequences of ``XYZ -> ABC (...)`` notes."""
    first, sep, second = note.partition(" -> ")
    if not sep:
        return note
    k = second.find(" (")
    extra = ""
    if k >= 0:
        second, extra = second[:k], second[k:]
    a, b = first.replace(" ", ""), second.replace(" ", "")
    if not (a.isalpha() and a.isupper() and b.isalpha() and b.isupper()):
        return note
    return f"{a} -> {b}{extra}"


def _old_note(parts: list[str], ftype: str) -> tuple[str | None, str | None]:
    """Pre-2019 description -> (note, evidence): one trailing full stop dropped, ``{ECO:..}`` split off."""
    note = join_wrapped(parts)
    if len(parts) > 1 and ftype in _SEQ_NOTE_TYPES:
        note = _fix_seq_note(note)
    if note.endswith(".") and not note.endswith(".."):
        note = note[:-1]
    evidence = None
    if note.endswith("}"):  # 2013-2019 files: "Note text {ECO:...}."
        k = note.rfind("{ECO:")
        if k >= 0:
            evidence = note[k + 1 : -1]
            note = note[:k].rstrip()
            if note.endswith("."):
                note = note[:-1]
    return note or None, evidence


def _merge_odd_continuations(chunks: list[str]) -> list[str]:
    merged = [chunks[0]]
    for ch in chunks[1:]:
        if ch[:1] == " ":
            if len(merged) == 1:
                raise FeatureFormatError(f"FT continuation line before any feature: {ch.strip()[:40]!r}")
            merged[-1] += "\t" + ch.strip()
        else:
            merged.append(ch)
    return merged


def parse_features(block: str) -> list[Feature]:
    """The FT lines of one entry as one string (lines separated by newlines) -> features in file order.

    Precondition (checked by both scanners in :mod:`protclip.data.uniprot_entry`): every line starts with
    ``"FT   "``.
    """
    s = "\n" + block.rstrip("\n")
    first = s[: s.find("\n", 1)] if "\n" in s[1:] else s
    if len(first.split(None, 4)) >= 4:  # pre-2019 syntax: FT KEY from to ...
        s = s.replace(_OLD_CONT, "\t")
    s = s.replace(_NEW_CONT, "\t")
    chunks = s.split("\nFT   ")
    if "\nFT    " in s:  # continuation lines with unusual indentation: attach to the previous feature
        chunks = _merge_odd_continuations(chunks)
    out: list[Feature] = []
    append = out.append
    for ch in chunks[1:]:
        t = ch.find("\t")
        head, rest = (ch, "") if t < 0 else (ch[:t], ch[t + 1 :])
        toks = head.split(None, 3)
        n = len(toks)
        if n == 2:  # current syntax (inlined: this loop runs for every feature of every entry)
            key, loc = toks
            iso = None
            if loc.isdigit():
                start = end = int(loc)
                sf = ef = ""
            else:
                if ":" in loc:
                    iso, _, loc = loc.rpartition(":")
                a, sep, b = loc.partition("..")
                if a.isdigit():
                    start, sf = int(a), ""
                else:
                    start, sf = _pos(a)
                if not sep:
                    end, ef = start, sf
                elif b.isdigit():
                    end, ef = int(b), ""
                else:
                    end, ef = _pos(b)
            note = None
            if rest:
                if rest[0] != "/":
                    raise FeatureFormatError(f"{key} {loc}: text outside a qualifier: {rest[:40]!r}")
                k = rest.find('/note="')
                if k >= 0:
                    e = rest.find('"\t/', k)
                    note = rest[k + 7 : e] if e >= 0 else rest[k + 7 : -1]
                    if "\t" in note:
                        note = _unwrap_tabs(note)
                        if key in _SEQ_NOTE_TYPES:
                            note = _fix_seq_note(note)
                elif "/ligand=" in rest:
                    note = _unwrap_tabs(_qualifier(rest, '/ligand="') or "")
            append(Feature(key, start, end, note, sf, ef, iso, rest))
        elif n >= 3:
            start, sf = _pos(toks[1])
            end, ef = _pos(toks[2])
            parts = [toks[3].strip()] if n == 4 else []
            fid = None
            if rest:
                for p in rest.split("\t"):
                    p = p.strip()
                    if p.startswith("/FTId="):
                        fid = p[6:].rstrip(".")
                    elif p:
                        parts.append(p)
            note, evidence = _old_note(parts, toks[0]) if parts else (None, None)
            quals = "\t".join(f'/{q}="{v}"' for q, v in (("evidence", evidence), ("id", fid)) if v)
            append(Feature(toks[0], start, end, note, sf, ef, None, quals))
        else:
            raise FeatureFormatError(f"feature line without a location: {head.strip()[:40]!r}")
    return out
