"""Record types shared by the UniProt flat-file parser, the TSV reader and the ProtAnno schema.

Plain slotted dataclasses (no pydantic): hundreds of millions of them are built during a ProtAnno build,
so construction cost matters more than validation hooks. Validation happens in the parsers, which turn
bad input into a :class:`MalformedRecord` instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from protclip.data.uniprot.text import qualifier_value, unwrap_tabs


class Feature(NamedTuple):
    """One positional feature (FT line group), 1-based inclusive positions.

    Position policy:

    * ``10``      -> 10, fuzzy ""
    * ``<1``      -> 1,  fuzzy "<"  (feature extends before the known sequence; the number is kept)
    * ``>445``    -> 445, fuzzy ">" (extends past the end; the number is kept)
    * ``?58``     -> 58, fuzzy "?"  (position uncertain but estimated; the estimate is kept)
    * ``?``       -> None, fuzzy "?" (position unknown)

    ``isoform`` is set for features located on another isoform (``Q9XYZ-2:10..20``).
    ``note`` is the ``/note`` qualifier (current syntax) or the description column (pre-2019 syntax, one trailing
    full stop removed); a BINDING feature with ``/ligand`` but no ``/note`` gets the ligand name as note, since
    the pre-2022 syntax carried the ligand in the note. The other qualifiers stay in ``qualifiers`` (raw text,
    see :func:`~protclip.data.uniprot.text.qualifier_value`) and are decoded on access (``evidence``, ``ft_id``,
    :meth:`qualifier`): the ProtAnno row only needs the note. A NamedTuple so the parser can build it with ``tuple.__new__`` (no Python-level
    ``__init__`` per feature; features are the bulk of a Swiss-Prot entry).
    """

    type: str
    start: int | None
    end: int | None
    note: str | None = None
    start_fuzzy: str = ""
    end_fuzzy: str = ""
    isoform: str | None = None
    qualifiers: str = ""

    def qualifier(self, name: str) -> str | None:
        """Decoded value of one qualifier (``"evidence"``, ``"id"``, ``"ligand_id"``, ...), or None."""
        v = qualifier_value(self.qualifiers, "/" + name + '="')
        if v is not None and "\t" in v:
            v = unwrap_tabs(v)
        return v

    @property
    def evidence(self) -> str | None:
        return self.qualifier("evidence")

    @property
    def ft_id(self) -> str | None:
        v = self.qualifier("id")
        return v.replace(" ", "") if v is not None else None


@dataclass(slots=True)
class UniProtRecord:
    """One UniProtKB entry reduced to what ProtAnno needs.

    ``function`` / ``subcellular_location`` / ``similarity`` are rendered as UniProt's TSV export renders
    the CC columns: ``"FUNCTION: ..."`` with evidence tags kept, several blocks of one topic joined by ``"; "``.
    ``protein_name`` is the TSV "Protein names" column (evidence tags dropped, as the TSV does).
    ``source_offset`` is the byte offset of the record's first byte in the (uncompressed) source stream;
    ``source_line`` its 1-based line number, or None when parsing a chunk whose line count is unknown.
    """

    accession: str
    secondary_accessions: list[str]
    entry_name: str
    reviewed: bool
    organism: str | None
    taxon_id: int | None
    protein_existence: int
    protein_name: str
    function: str | None
    subcellular_location: str | None
    similarity: str | None
    sequence: str
    go_terms: list[str] = field(default_factory=list)
    ec_numbers: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    features: list[Feature] = field(default_factory=list)
    crc64: str | None = None
    fragment: bool = False
    source_file: str = ""
    source_offset: int = 0
    source_line: int | None = None

    @property
    def length(self) -> int:
        return len(self.sequence)

    @property
    def n_properties(self) -> int:
        """Property coverage k: the name always counts (ProtCLIP `sampling.py`)."""
        return (
            1
            + (self.function is not None)
            + (self.subcellular_location is not None)
            + (self.similarity is not None)
        )


@dataclass(slots=True, frozen=True)
class MalformedRecord:
    """An entry the parser could not turn into a record; reported, never dropped silently."""

    source: str
    byte_offset: int
    line: int | None
    accession: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        acc = self.accession or "?"
        return f"{where} (byte {self.byte_offset}, accession {acc}): {self.reason}"


ParseResult = UniProtRecord | MalformedRecord


@dataclass(slots=True, frozen=True)
class RawRecord:
    """The raw bytes of one entry, as cut by the splitter (parsing happens later, possibly elsewhere)."""

    offset: int
    line: int | None
    data: bytes
    terminated: bool = True
    error: str | None = None  # set when the input stream itself broke here (truncated/corrupt .gz): reported


@dataclass
class ParseReport:
    """Everything parsed from one file: good records and the malformed ones, in file order."""

    records: list[UniProtRecord] = field(default_factory=list)
    errors: list[MalformedRecord] = field(default_factory=list)

    @property
    def n_total(self) -> int:
        return len(self.records) + len(self.errors)
