"""Parse the text of one UniProtKB flat-file entry into a :class:`UniProtRecord`.

The text before the SQ line is walked block by block (a block = consecutive lines sharing a line code): one
regex search finds where each block ends, the block is handled as a whole (GO ids picked out of DR with
``str.find``, FT and CC handed over as text), and reference lines are never looked at one by one. This keeps
the per-entry Python work proportional to the number of blocks (~30), not lines (~350 in Swiss-Prot).

Problems raise :class:`EntryError`; :func:`protclip.data.uniprot.reader.parse_raw` turns that into a
MalformedRecord.
"""

from __future__ import annotations

import re

from protclip.data.uniprot.crc import crc64
from protclip.data.uniprot.de import DEFormatError, parse_de
from protclip.data.uniprot.ft import FeatureFormatError, parse_features
from protclip.data.uniprot.records import UniProtRecord
from protclip.data.uniprot.text import join_wrapped, unwrap_tabs

VALID_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWY" + "UOBZX")
_STATUS = {"Reviewed;": True, "Unreviewed;": False, "STANDARD;": True, "PRELIMINARY;": False}
_CC_TOPIC = "\nCC   -!- "
_CC_KEPT = re.compile(r"\nCC   -!- (FUNCTION|SUBCELLULAR LOCATION|SIMILARITY):")
_CC_INDEX = {"FUNCTION": 0, "SUBCELLULAR LOCATION": 1, "SIMILARITY": 2}
_ECO_TAG = re.compile(r"\s*\{[^}]*\}")
_WS_TAB = re.compile(r" *\t *")
_CC_CONT = "\nCC       "
_GO = "\nDR   GO; "
_REF_CODES = frozenset({"RN", "RP", "RC", "RX", "RG", "RA", "RT", "RL"})
_CODES = (
    "ID",
    "AC",
    "DT",
    "DE",
    "GN",
    "OS",
    "OG",
    "OC",
    "OX",
    "OH",
    "CC",
    "DR",
    "PE",
    "KW",
    "FT",
    "SQ",
    "**",
)
# block end = first line that does not carry the block's code (one regex search per block)
_BLOCK_END = {c: re.compile(r"\n(?!" + re.escape(c) + "   )") for c in _CODES}
_REF_END = re.compile(r"\n(?!R[NPCXGATL]   )")
for _c in _REF_CODES:
    _BLOCK_END[_c] = _REF_END


class EntryError(Exception):
    """Why an entry is malformed (the message becomes MalformedRecord.reason)."""


class _Head:
    """Everything before the SQ line, sorted by line code."""

    __slots__ = ("acs", "de", "os", "kw", "cc", "ft", "go", "ox", "pe")

    def __init__(self) -> None:
        self.acs: list[str] = []
        self.de: list[str] = []
        self.os: list[str] = []
        self.kw: list[str] = []  # KW blocks, line prefixes removed
        self.cc: list[tuple[int, int]] = []  # CC blocks as (newline before the block, block end) in the text
        self.ft: list[str] = []  # FT blocks
        self.go: list[str] = []
        self.ox: str | None = None
        self.pe: int | None = None


def _where(text: str, pos: int, line: int | None) -> str:
    n = text.count("\n", 0, pos + 1)
    return f" at line {line + n}" if line is not None else f" (line {n + 1} of the record)"


def _scan(text: str, end: int, line: int | None) -> _Head:
    """Walk ``text[:end]`` block by block (a block = consecutive lines with one line code).

    Each block's end is found by one regex search (``\\n(?!XX   )``), so lines are never visited one by one
    in Python; an unknown line code has no pattern and is reported with its line number. Blocks may come in
    any order; the reference lines (RN..RL) form one block that is checked but not read.
    """
    h = _Head()
    pos = text.find("\n")  # the ID line was checked by the caller
    while 0 <= pos < end:
        s = pos + 1
        code = text[s : s + 2]
        pat = _BLOCK_END.get(code)
        if pat is None:
            if code == "  ":
                raise EntryError(
                    f"missing SQ line (sequence data{_where(text, pos, line)} without an SQ line)"
                )
            raise EntryError(f"unknown line code {code!r}{_where(text, pos, line)}: {text[s : s + 40]!r}")
        m = pat.search(text, s, end)
        e = m.start() if m is not None else end
        if code in _REF_CODES or code == "DR":
            if code == "DR":
                k = text.find(_GO, pos, e)
                while k >= 0:
                    k += 10
                    h.go.append(text[k : text.find(";", k, e)])
                    k = text.find(_GO, k, e)
        elif code == "FT":
            h.ft.append(text[s:e])
        elif code == "CC":
            h.cc.append((pos, e))
        elif code == "AC":
            for ln in text[s:e].split("\n"):
                h.acs.extend(a for a in ln[5:].replace(" ", "").split(";") if a)
        elif code == "DE":
            h.de.extend(ln[5:] for ln in text[s:e].split("\n"))
        elif code == "OS":
            h.os.extend(ln[5:].strip() for ln in text[s:e].split("\n"))
        elif code == "OX":
            nl = text.find("\n", s, e)
            h.ox = text[s + 5 : nl if nl >= 0 else e]
        elif code == "KW":
            h.kw.append(text[s + 5 : e].replace("\nKW   ", " "))
        elif code == "PE":
            pe = text[s + 5 : s + 6]
            if not ("1" <= pe <= "5") or text[s + 6 : s + 7] != ":":
                raise EntryError(f"bad PE line {text[s:e]!r}")
            h.pe = int(pe)
        elif code == "ID":
            raise EntryError(f"second ID line{_where(text, pos, line)}")
        elif code == "SQ":
            raise EntryError(f"second SQ line{_where(text, pos, line)}")
        # DT, GN, OG, OC, OH, **: not needed
        pos = e
    return h


def _cc_text(text: str, blocks: list[tuple[int, int]]) -> tuple[str | None, str | None, str | None]:
    """CC blocks -> (function, subcellular location, similarity), rendered as the TSV columns.

    Several comments of one topic are joined by ``"; "`` (as in UniProt's TSV and the released ProtAnno text);
    other topics and the copyright block are skipped. A regex finds just the three topics; continuation
    prefixes become tabs in one ``replace`` and are unwrapped with the hyphen rule of
    :func:`~protclip.data.uniprot.text.join_wrapped`.
    """
    out: tuple[list[str], list[str], list[str]] = ([], [], [])
    for pos, e in blocks:
        for m in _CC_KEPT.finditer(text, pos, e):
            b = m.start() + 10
            nxt = text.find(_CC_TOPIC, m.end(), e)
            t = text[b : nxt if nxt >= 0 else e].replace(_CC_CONT, "\t")
            cut = t.find("\n")  # a non-continuation line (the copyright block) ends the topic
            if cut >= 0:
                t = t[:cut]
            if "\t " in t or " \t" in t:
                t = _WS_TAB.sub("\t", t)
            out[_CC_INDEX[m.group(1)]].append(unwrap_tabs(t.strip()))
    f, loc, sim = ("; ".join(x) or None for x in out)
    return f, loc, sim


def _keywords(blocks: list[str]) -> list[str]:
    s = " ".join(blocks).strip()
    if s.endswith("."):
        s = s[:-1]
    if "{" in s:  # "Membrane {ECO:...}": the TSV has no evidence on keywords
        s = _ECO_TAG.sub("", s)
    return [k for k in (x.strip() for x in s.split(";")) if k]


def parse_entry(
    text: str, source: str, offset: int, line: int | None, verify_crc: bool = True
) -> UniProtRecord:
    """Text of one terminated entry (``ID`` ... ``//`` + newline) -> record; raises EntryError."""
    if not text.startswith("ID   "):
        raise EntryError(f"missing ID line (record starts with {text[:20]!r})")
    term = text.rfind("\n//")
    if term < 0:
        raise EntryError("truncated record: no '//' terminator")
    sq = text.rfind("\nSQ   ", 0, term)
    head_end = sq if sq >= 0 else term
    h = _scan(text, head_end, line)
    id_line = text[: text.find("\n")]
    toks = id_line[5:].split()
    if len(toks) < 4 or toks[-1] != "AA." or toks[1] not in _STATUS or not toks[-2].isdigit():
        raise EntryError(f"bad ID line {id_line!r}")
    if not h.acs:
        raise EntryError("missing AC line")
    if h.pe is None:
        raise EntryError("missing PE line")
    if not h.de:
        raise EntryError("missing DE line")
    try:
        name, ecs, fragment = parse_de(h.de)
    except DEFormatError as e:
        raise EntryError(f"DE: {e}") from None
    taxon: int | None = None
    if h.ox is not None:
        v = h.ox[11:].split(";")[0].split(" ")[0] if h.ox.startswith("NCBI_TaxID=") else ""
        if not v.isdigit():
            raise EntryError(f"bad OX line {h.ox!r}")
        taxon = int(v)
    organism = None
    if h.os:
        organism = join_wrapped(h.os)
        if organism.endswith("."):
            organism = organism[:-1]
    function, location, similarity = _cc_text(text, h.cc) if h.cc else (None, None, None)
    try:
        features = parse_features("\n".join(h.ft)) if h.ft else []
    except FeatureFormatError as e:
        raise EntryError(f"FT: {e}") from None
    if sq < 0:
        raise EntryError("missing SQ line")
    eol = text.find("\n", sq + 1)
    st = text[sq + 6 : eol].split()
    if len(st) < 3 or st[0] != "SEQUENCE" or not st[1].isdigit():
        raise EntryError(f"bad SQ line {text[sq + 1 : eol]!r}")
    sq_len = int(st[1])
    block = text[eol:term]  # "\n     SEQ ..\n     SEQ .." (each line preceded by its newline)
    if block.count("\n") != block.count("\n "):
        raise EntryError("non-sequence line between SQ and '//'")
    seq = block.replace(" ", "").replace("\n", "")
    if not VALID_RESIDUES.issuperset(seq):
        bad = "".join(sorted(set(seq) - VALID_RESIDUES))
        raise EntryError(f"invalid residue characters {bad!r} in sequence")
    if len(seq) != sq_len:
        raise EntryError(f"sequence length {len(seq)} != SQ line length {sq_len}")
    id_len = int(toks[-2])
    if id_len != sq_len:
        raise EntryError(f"ID line length {id_len} != SQ line length {sq_len}")
    crc = st[-2].upper() if st[-1] == "CRC64;" else None
    if verify_crc and crc is not None:
        got = crc64(seq)
        if got != crc:
            raise EntryError(f"CRC64 mismatch: SQ line says {crc}, sequence gives {got}")
    return UniProtRecord(
        accession=h.acs[0],
        secondary_accessions=h.acs[1:],
        entry_name=toks[0],
        reviewed=_STATUS[toks[1]],
        organism=organism,
        taxon_id=taxon,
        protein_existence=h.pe,
        protein_name=name,
        function=function,
        subcellular_location=location,
        similarity=similarity,
        sequence=seq,
        go_terms=h.go,
        ec_numbers=ecs,
        keywords=_keywords(h.kw) if h.kw else [],
        features=features,
        crc64=crc,
        fragment=fragment,
        source_file=source,
        source_offset=offset,
        source_line=line,
    )
