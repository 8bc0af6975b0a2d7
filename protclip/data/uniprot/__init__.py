"""UniProtKB input: the streaming flat-file parser (``.dat`` / ``.dat.gz``) and the TSV export reader.

Callers import from here; the modules behind it, in dependency order:

* :mod:`~protclip.data.uniprot.text`: line unwrapping and FT qualifier lookup shared by the parsers;
* :mod:`~protclip.data.uniprot.records`: the record types (UniProtRecord, MalformedRecord, RawRecord, ...);
* :mod:`~protclip.data.uniprot.crc`, :mod:`~protclip.data.uniprot.de`, :mod:`~protclip.data.uniprot.ft`:
  CRC64, DE lines, FT lines;
* :mod:`~protclip.data.uniprot.entry`: one entry's text -> record;
* :mod:`~protclip.data.uniprot.split`: byte stream -> raw records, record-aligned chunk planning;
* :mod:`~protclip.data.uniprot.reader`: raw records -> parse results (the parser's entry points and policies);
* :mod:`~protclip.data.uniprot.tsv`: the UniProt TSV export.
"""

from protclip.data.uniprot.entry import VALID_RESIDUES
from protclip.data.uniprot.reader import iter_chunk, iter_records, parse_file, parse_raw_batch
from protclip.data.uniprot.records import (
    Feature,
    MalformedRecord,
    ParseReport,
    ParseResult,
    RawRecord,
    UniProtRecord,
)
from protclip.data.uniprot.split import (
    chunk_ranges,
    find_record_boundaries,
    iter_raw_records,
    iter_record_batches,
    line_numbers_at,
    open_uniprot,
)
from protclip.data.uniprot.tsv import TsvFormatError, iter_tsv_records, read_tsv

__all__ = [
    "Feature",
    "MalformedRecord",
    "ParseReport",
    "ParseResult",
    "RawRecord",
    "TsvFormatError",
    "UniProtRecord",
    "VALID_RESIDUES",
    "chunk_ranges",
    "find_record_boundaries",
    "iter_chunk",
    "iter_raw_records",
    "iter_record_batches",
    "iter_records",
    "iter_tsv_records",
    "line_numbers_at",
    "open_uniprot",
    "parse_file",
    "parse_raw_batch",
    "read_tsv",
]
