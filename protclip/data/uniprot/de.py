"""DE lines -> the UniProt TSV "Protein names" string and the EC numbers.

Rendering follows the UniProt TSV export (the column ProtCLIP's ``sampling.py`` read), e.g.
``Glutathione hydrolase proenzyme (EC 3.4.19.13) (Gamma-glutamyltranspeptidase proenzyme) (GGT) (EC 2.3.2.2)
[Cleaved into: Glutathione hydrolase large chain; Glutathione hydrolase small chain]``:

* recommended name (or first submitted name), then each of its short names and ``EC x`` in parentheses;
* each alternative name's full name, short names and ECs, each in its own parentheses;
* further submitted names (TrEMBL) the same way;
* ``(allergen X)``, ``(biotech X)``, ``(CD antigen X)``, ``(X)`` for INN names;
* ``[Cleaved into: A (a1); B]`` for ``Contains:`` sections, then ``[Includes: ...]`` for ``Includes:``.

Evidence tags (``{ECO:...}``) are dropped from names, as the TSV does. ``Flags:`` (Precursor/Fragment) are not
part of the name. The pre-2008 single-string DE syntax is rendered as written (it already reads this way),
with ``(Fragment)`` dropped and ``[Contains:`` renamed ``[Cleaved into:``.
"""

from __future__ import annotations

import re

_OLD_EC = re.compile(r"\(EC ([0-9n.\-]+)\)")


class DEFormatError(ValueError):
    """A DE line that cannot be understood."""


class _Name:
    __slots__ = ("full", "shorts", "ecs")

    def __init__(self, full: str) -> None:
        self.full = full
        self.shorts: list[str] = []
        self.ecs: list[str] = []

    def items(self) -> list[str]:
        return [self.full, *self.shorts, *("EC " + e for e in self.ecs)]


class _Section:
    __slots__ = ("rec", "alts", "subs", "allergen", "biotech", "cd", "inn")

    def __init__(self) -> None:
        self.rec: _Name | None = None
        self.alts: list[_Name] = []
        self.subs: list[_Name] = []
        self.allergen: list[str] = []
        self.biotech: list[str] = []
        self.cd: list[str] = []
        self.inn: list[str] = []

    def render(self) -> str:
        parts: list[str] = []
        if self.rec is not None:
            it = self.rec.items()
            parts.append(it[0])
            parts.extend(f"({x})" for x in it[1:])
        for alt in self.alts:
            parts.extend(f"({x})" for x in alt.items())
        for i, sub in enumerate(self.subs):
            it = sub.items()
            if i == 0 and self.rec is None:
                parts.append(it[0])
                parts.extend(f"({x})" for x in it[1:])
            else:
                parts.extend(f"({x})" for x in it)
        parts.extend(f"(allergen {x})" for x in self.allergen)
        parts.extend(f"(biotech {x})" for x in self.biotech)
        parts.extend(f"(CD antigen {x})" for x in self.cd)
        parts.extend(f"({x})" for x in self.inn)
        return " ".join(parts)

    def ecs(self) -> list[str]:
        out: list[str] = []
        for n in (self.rec, *self.alts, *self.subs):
            if n is not None:
                out.extend(n.ecs)
        return out


def _value(text: str) -> str:
    """``Full=Name {ECO:...};`` payload -> ``Name``."""
    if text.endswith(";"):
        text = text[:-1]
    if text.endswith("}"):
        k = text.rfind(" {")
        if k >= 0:
            text = text[:k]
    return text.strip()


def parse_de(lines: list[str]) -> tuple[str, list[str], bool]:
    """DE line payloads (text after ``DE   ``) -> (protein name, sorted unique EC numbers, fragment flag)."""
    if not lines:
        raise DEFormatError("no DE lines")
    first = lines[0].lstrip()
    if not first.startswith(("RecName:", "SubName:", "AltName:", "Contains:", "Includes:", "Flags:")):
        return _parse_old_de(lines)
    main = _Section()
    contains: list[_Section] = []
    includes: list[_Section] = []
    cur_section = main
    cur_name: _Name | None = None
    fragment = False
    for raw in lines:
        indented = raw.startswith("  ")
        text = raw.strip()
        if not text:
            continue
        if text == "Contains:" or text == "Includes:":
            cur_section = _Section()
            (contains if text == "Contains:" else includes).append(cur_section)
            cur_name = None
            continue
        if not indented and cur_section is not main and text.startswith(("RecName:", "AltName:", "SubName:")):
            cur_section = main  # a top-level name after a section (unusual order, tolerated)
        head, sep, rest = text.partition(": ")
        if sep and head in ("RecName", "AltName", "SubName"):
            key, eq, val = rest.partition("=")
            if not eq:
                raise DEFormatError(f"DE {head} without '=': {text!r}")
            val = _value(val)
            if key == "Full":
                cur_name = _Name(val)
                if head == "RecName":
                    if cur_section.rec is not None:
                        raise DEFormatError(f"second RecName in one section: {text!r}")
                    cur_section.rec = cur_name
                elif head == "AltName":
                    cur_section.alts.append(cur_name)
                else:
                    cur_section.subs.append(cur_name)
            elif head == "AltName" and key in ("Allergen", "Biotech", "CD_antigen", "INN"):
                {
                    "Allergen": cur_section.allergen,
                    "Biotech": cur_section.biotech,
                    "CD_antigen": cur_section.cd,
                    "INN": cur_section.inn,
                }[key].append(val)
                cur_name = None
            else:
                raise DEFormatError(f"unexpected DE {head} key {key!r}: {text!r}")
            continue
        if head == "Flags" and sep:
            fragment = fragment or "Fragment" in rest
            continue
        key, eq, val = text.partition("=")
        if eq and key in ("Short", "EC"):
            if cur_name is None:
                raise DEFormatError(f"DE {key}= without a preceding Full name: {text!r}")
            (cur_name.shorts if key == "Short" else cur_name.ecs).append(_value(val))
            continue
        raise DEFormatError(f"unrecognised DE line {text!r}")
    name = main.render()
    if contains:
        name += " [Cleaved into: " + "; ".join(s.render() for s in contains) + "]"
    if includes:
        name += " [Includes: " + "; ".join(s.render() for s in includes) + "]"
    name = name.strip()
    if not name:
        raise DEFormatError("DE lines hold no protein name")
    ecs = main.ecs()
    for s in contains + includes:
        ecs.extend(s.ecs())
    return name, sorted(set(ecs)), fragment


def _parse_old_de(lines: list[str]) -> tuple[str, list[str], bool]:
    """Pre-2008 DE: one free-text description wrapped over several lines."""
    text = lines[0].strip()
    for ln in lines[1:]:
        ln = ln.strip()
        text = text + ln if text.endswith("-") and not text.endswith(" -") else text + " " + ln
    if text.endswith("."):
        text = text[:-1]
    fragment = False
    for tail in (" (Fragments)", " (Fragment)"):
        if text.endswith(tail):
            text, fragment = text[: -len(tail)], True
    text = text.replace("[Contains: ", "[Cleaved into: ").strip()
    if not text:
        raise DEFormatError("DE lines hold no protein name")
    return text, sorted(set(_OLD_EC.findall(text))), fragment
