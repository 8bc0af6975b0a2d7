"""Streaming parser for UniProtKB flat files (``.dat`` / ``.dat.gz``, Swiss-Prot and TrEMBL).

Design: :mod:`~protclip.data.uniprot.split` cuts the byte stream into raw records (with byte offsets and line
numbers); :func:`parse_raw` turns a raw record into :class:`UniProtRecord` / :class:`MalformedRecord` results
(one, or several when damage glued entries together). Nothing raises out of the iterators for bad input and
nothing is dropped silently, so ``good + bad == total`` for every file.

Entry points: :func:`iter_records` (stream -> results), :func:`parse_file` (small files), :func:`iter_chunk`
(a record-aligned byte range of a plain ``.dat``, planned with :func:`find_record_boundaries` /
:func:`chunk_ranges`), and for ``.dat.gz`` (not seekable) :func:`iter_record_batches` on one reader +
:func:`parse_raw_batch` on workers. Offsets in ``.gz`` files are offsets in the uncompressed stream.

Speed (see ``benchmarks/parse_benchmark.py``): records are cut with one fast search per record, entries are
walked block by block rather than line by line (:mod:`~protclip.data.uniprot.entry`), the feature table is
split as one string (:mod:`~protclip.data.uniprot.ft`), and the CRC64 check is vectorised with numpy
(:mod:`~protclip.data.uniprot.crc`).

Policies:

* Residues: the 20 standard letters plus U (Sec), O (Pyl), B, Z, X are valid and kept as is. Anything else
  (lowercase, J, ``*``, digits, punctuation) makes the record malformed: UniProt writes uppercase only, so a
  lowercase letter means corrupted or foreign input and is reported rather than silently upper-cased.
* Checks: ``//`` terminator present; ID, AC, DE, PE, SQ lines present; every line code known (``**`` internal
  lines are accepted and ignored); sequence length equals the SQ and ID lengths; CRC64 equals the SQ line's
  (``verify_crc=False`` skips the CRC only).
* ``PE`` is required (schema and sampling depend on it); pre-2007 entries without PE are reported as malformed.
* Line numbers are 1-based and exact for whole-file parsing; a chunk parsed on its own knows them only if the
  caller passes ``start_line`` (see :func:`line_numbers_at`), else they are None.
* Text encoding: ASCII expected; UTF-8 accepted; undecodable bytes make the record malformed. CRLF is accepted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from protclip.data.uniprot.crc import crc64_many
from protclip.data.uniprot.entry import EntryError, parse_entry
from protclip.data.uniprot.records import MalformedRecord, ParseReport, ParseResult, RawRecord, UniProtRecord
from protclip.data.uniprot.split import iter_chunk_raw, iter_raw_records, open_uniprot, split_raw


def _first_accession(text: str) -> str | None:
    """Best-effort primary accession of a (possibly broken) record, for error reports."""
    if text.startswith("AC   "):
        k = 0
    else:
        k = text.find("\nAC   ")
        if k < 0:
            return None
        k += 1
    end = text.find(";", k)
    if end < 0:
        return None
    acc = text[k + 5 : end].strip()
    return acc if acc.isalnum() else None


def _parse_one(raw: RawRecord, source: str, verify_crc: bool) -> ParseResult:
    if raw.error:  # the stream broke here (truncated .gz): one report, the records before it are kept
        return MalformedRecord(source, raw.offset, raw.line, None, raw.error)
    data = raw.data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            text = data.decode("latin-1")
            return MalformedRecord(
                source,
                raw.offset,
                raw.line,
                _first_accession(text),
                f"undecodable (non UTF-8) byte at record byte {e.start}",
            )
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not raw.terminated:
        if not text.startswith("ID   "):
            return MalformedRecord(
                source,
                raw.offset,
                raw.line,
                _first_accession(text),
                f"stray text outside any entry (no ID line): {text[:30]!r}",
            )
        return MalformedRecord(
            source, raw.offset, raw.line, _first_accession(text), "truncated record: no '//' terminator"
        )
    if not text.endswith("\n"):
        text += "\n"
    if text.startswith("//"):
        return MalformedRecord(source, raw.offset, raw.line, None, "empty record ('//' without an entry)")
    try:
        return parse_entry(text, source, raw.offset, raw.line, verify_crc)
    except EntryError as e:
        return MalformedRecord(source, raw.offset, raw.line, _first_accession(text), str(e))
    except (ValueError, IndexError) as e:  # defensive: any other parse failure is reported, not raised
        return MalformedRecord(
            source,
            raw.offset,
            raw.line,
            _first_accession(text),
            f"unparseable record ({type(e).__name__}: {e})",
        )


def parse_raw(raw: RawRecord, source: str, verify_crc: bool = True) -> list[ParseResult]:
    """Parse one raw record; never raises for bad input.

    Usually one result. The fast splitter can leave several entries in one raw record when the input is
    damaged (a missing ``//``, junk between records, a record cut mid-line right before the next ID line); such
    a record fails to parse, is re-split with the careful splitter and each piece is parsed, so the good entries
    around the damage are kept.
    """
    res = _parse_one(raw, source, verify_crc)
    if isinstance(res, MalformedRecord):  # rare: maybe several entries glued together by damage
        parts = _unglue(raw)
        if len(parts) > 1:
            return [r for p in parts for r in parse_raw(p, source, verify_crc)]
        pieces = split_raw(raw)
        if len(pieces) > 1:
            return [_parse_one(p, source, verify_crc) for p in pieces]
    return [res]


#: an ID line glued to the end of damaged text (a record cut mid-line, junk without a final newline)
_GLUED_ID = re.compile(rb"[^\n]ID   [A-Z0-9_]+ +(?:Reviewed|Unreviewed|STANDARD|PRELIMINARY); +(?:PRT; +)?\d+ AA\.\r?\n")


def _unglue(raw: RawRecord) -> list[RawRecord]:
    """Cut ``raw`` before every ID line that does not start a line: the damaged text before it becomes its own
    (unterminated) piece and the entry after it is parsed on its own instead of being lost with the damage."""
    cuts = [m.start() + 1 for m in _GLUED_ID.finditer(raw.data)]
    if not cuts:
        return [raw]
    out, prev = [], 0
    for k in [*cuts, len(raw.data)]:
        line = None if raw.line is None else raw.line + raw.data.count(b"\n", 0, prev)
        last = k == len(raw.data)
        out.append(RawRecord(raw.offset + prev, line, raw.data[prev:k], raw.terminated if last else False))
        prev = k
    return out


_GROUP = 64  # raw records parsed together so their CRC64s are checked in one vectorised call


def _verify_crcs(results: list[ParseResult]) -> None:
    """Replace records whose sequence does not match the SQ line's CRC64 by MalformedRecords (in place)."""
    idx = [i for i, r in enumerate(results) if isinstance(r, UniProtRecord) and r.crc64 is not None]
    recs = [results[i] for i in idx]
    got = crc64_many([r.sequence.encode("ascii") for r in recs])  # type: ignore[union-attr]
    for i, rec, c in zip(idx, recs, got, strict=True):
        if isinstance(rec, UniProtRecord) and f"{c:016X}" != rec.crc64:
            results[i] = MalformedRecord(
                rec.source_file,
                rec.source_offset,
                rec.source_line,
                rec.accession,
                f"CRC64 mismatch: SQ line says {rec.crc64}, sequence gives {c:016X}",
            )


def parse_raw_batch(raws: Iterable[RawRecord], source: str, verify_crc: bool = True) -> list[ParseResult]:
    """Parse a batch of raw records (what a Ray Data worker runs on a batch cut by iter_record_batches)."""
    out: list[ParseResult] = []
    for r in raws:
        out.extend(parse_raw(r, source, verify_crc=False))
    if verify_crc:
        _verify_crcs(out)
    return out


def iter_records(
    stream: BinaryIO,
    source_name: str,
    start_offset: int = 0,
    start_line: int | None = 1,
    max_bytes: int | None = None,
    verify_crc: bool = True,
) -> Iterator[ParseResult]:
    """Parse a binary stream (already decompressed) entry by entry; good + malformed results cover everything."""
    group: list[RawRecord] = []
    for raw in iter_raw_records(
        stream, start_offset=start_offset, start_line=start_line, max_bytes=max_bytes
    ):
        group.append(raw)
        if len(group) == _GROUP:
            yield from parse_raw_batch(group, source_name, verify_crc)
            group = []
    if group:
        yield from parse_raw_batch(group, source_name, verify_crc)


def iter_chunk(
    path: str | os.PathLike[str],
    start: int,
    end: int,
    source_name: str | None = None,
    start_line: int | None = None,
    verify_crc: bool = True,
) -> Iterator[ParseResult]:
    """Parse the record-aligned byte range ``[start, end)`` of a plain ``.dat``."""
    src = source_name if source_name is not None else os.fspath(path)
    group: list[RawRecord] = []
    for raw in iter_chunk_raw(path, start, end, start_line=start_line):
        group.append(raw)
        if len(group) == _GROUP:
            yield from parse_raw_batch(group, src, verify_crc)
            group = []
    if group:
        yield from parse_raw_batch(group, src, verify_crc)


def parse_file(
    path: str | os.PathLike[str], source_name: str | None = None, verify_crc: bool = True
) -> ParseReport:
    """Parse a whole local ``.dat`` or ``.dat.gz`` into memory (small files, tests, tools)."""
    src = source_name if source_name is not None else os.fspath(path)
    report = ParseReport()
    with open_uniprot(path) as f:
        for res in iter_records(f, src, verify_crc=verify_crc):
            (report.records if isinstance(res, UniProtRecord) else report.errors).append(res)  # type: ignore[arg-type]
    return report
