"""Text rules shared by the entry parser, the FT parser and the ``Feature`` record type.

UniProt wraps long values over several lines; the parsers either join the lines (:func:`join_wrapped`) or
first turn each line break into a tab and undo that later (:func:`unwrap_tabs`). FT qualifiers are kept as
such tab-joined text and read on demand (:func:`qualifier_value`). One module, so that no parser reaches into
another's private helpers.
"""

from __future__ import annotations

import re

_HYPHEN_WRAP = re.compile(r"(?<! )-\n")
_HYPHEN_TAB = re.compile(r"(?<! )-\t")


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


def unwrap_tabs(s: str) -> str:
    """Same rule as :func:`join_wrapped` for a value whose line breaks were turned into tabs."""
    if "-\t" in s:
        s = _HYPHEN_TAB.sub("-", s)
    return s.replace("\t", " ")


def qualifier_value(quals: str, tag: str) -> str | None:
    """Value of qualifier ``tag`` (e.g. ``'/note="'``) in a feature's raw qualifier text, or None.

    Raw qualifier text is the qualifier lines of the current FT syntax with each line break turned into a tab:
    ``/note="..."<TAB>/evidence="..."<TAB>/id="..."``. Values are unquoted; wrapped lines stay tab-joined.
    """
    k = quals.find(tag)
    if k < 0:
        return None
    k += len(tag)
    e = quals.find('"\t/', k)
    if e < 0:
        e = len(quals) - 1 if quals.endswith('"') else len(quals)
    return quals[k:e]
