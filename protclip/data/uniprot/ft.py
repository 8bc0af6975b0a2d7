"""FT lines (positional features) in both syntaxes.

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

from protclip.data.uniprot.records import Feature
from protclip.data.uniprot.text import join_wrapped, qualifier_value, unwrap_tabs

_SEQ_NOTE_TYPES = frozenset({"VAR_SEQ", "VARSPLIC", "VARIANT", "CONFLICT"})
_OLD_CONT = "\nFT" + " " * 32  # pre-2019 continuation: text at column 35
_NEW_CONT = "\nFT" + " " * 19  # current continuation / qualifier: text at column 22


class FeatureFormatError(ValueError):
    """An FT line that cannot be understood."""


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
    """Attach continuation lines with unusual indentation to their feature; reject stray non-FT lines."""
    merged: list[str] = []
    for ch in chunks:
        if "\n" in ch:
            bad = ch[ch.find("\n") + 1 :][:40]
            raise FeatureFormatError(f"not a feature line: {bad!r}")
        if ch[:1] == " ":
            if not merged:
                raise FeatureFormatError(f"FT continuation line before any feature: {ch.strip()[:40]!r}")
            merged[-1] += "\t" + ch.strip()
        else:
            merged.append(ch)
    return merged


def parse_features(block: str) -> list[Feature]:
    """The FT lines of one entry as one string (lines separated by newlines) -> features in file order.

    Precondition (checked by the block scanner in :mod:`protclip.data.uniprot.entry`): every line starts with
    ``"FT   "``. One entry uses one syntax, decided from its first feature line.
    """
    nl = block.find("\n")
    old = len((block if nl < 0 else block[:nl]).split(None, 4)) >= 4  # FT KEY from to [...]
    s = block.replace(_OLD_CONT, "\t") if old else block
    chunks = s.replace(_NEW_CONT, "\t").split("\nFT   ")
    chunks[0] = chunks[0][5:]
    for ch in chunks:
        if ch[:1] == " " or "\n" in ch:  # odd indentation or a stray line: take the careful route
            chunks = _merge_odd_continuations(chunks)
            break
    return _old_features(chunks) if old else _new_features(chunks)


def _new_features(chunks: list[str]) -> list[Feature]:
    out: list[Feature] = []
    append = out.append
    new = tuple.__new__  # Feature is a NamedTuple: build it without a Python-level __new__ call
    for ch in chunks:
        head, _, rest = ch.partition("\t")
        try:
            key, loc = head.split()
        except ValueError:
            raise FeatureFormatError(f"bad feature line {head.strip()[:40]!r}") from None
        if loc.isdigit():
            start = end = int(loc)
            sf = ef = ""
            iso = None
        else:
            iso = None
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
        if rest:
            if rest[0] != "/":
                raise FeatureFormatError(f"{key} {loc}: text outside a qualifier: {rest[:40]!r}")
            k = rest.find('/note="')
            if k >= 0:
                e = rest.find('"\t/', k)
                note = rest[k + 7 : e] if e >= 0 else rest[k + 7 : -1]
                if "\t" in note:
                    note = unwrap_tabs(note)
                    if key in _SEQ_NOTE_TYPES:
                        note = _fix_seq_note(note)
            elif '/ligand="' in rest:
                note = unwrap_tabs(qualifier_value(rest, '/ligand="') or "")
            else:
                note = None
            append(new(Feature, (key, start, end, note, sf, ef, iso, rest)))
        else:
            append(new(Feature, (key, start, end, None, sf, ef, iso, "")))
    return out


def _old_features(chunks: list[str]) -> list[Feature]:
    out: list[Feature] = []
    for ch in chunks:
        head, _, rest = ch.partition("\t")
        toks = head.split(None, 3)
        if len(toks) < 3:
            raise FeatureFormatError(f"feature line without from/to: {head.strip()[:40]!r}")
        start, sf = _pos(toks[1])
        end, ef = _pos(toks[2])
        parts = [toks[3].strip()] if len(toks) == 4 else []
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
        out.append(Feature(toks[0], start, end, note, sf, ef, None, quals))
    return out
