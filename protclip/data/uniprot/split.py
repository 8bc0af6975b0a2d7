"""Cut a UniProt flat-file byte stream into raw records, and plan record-aligned chunks.

Splitting is separate from parsing so a distributed build can cut on one node (or per byte range of a
plain ``.dat``) and parse elsewhere. Everything works on bytes: offsets are exact byte offsets in the
(uncompressed) stream and no decoding happens here.

Record boundaries: a record ends with its ``//`` line. The streaming splitter cuts only at the common
``//`` + ``ID`` boundary (fast); :func:`split_exhaustive` is the careful splitter used for damaged stretches:
a record that lacks its ``//`` but is followed by an ``ID   `` line is cut there and marked
``terminated=False`` (reported as truncated), text after a ``//`` line that is no entry becomes its own raw
record (reported), whitespace-only lines between records are skipped.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from protclip.data.uniprot.records import RawRecord

_READ_BLOCK = 4 << 20
_MAX_PENDING = 32 << 20  # bytes without a fast boundary before falling back to the exhaustive splitter
_WS = b" \t\r\n"
_ID_SPLIT = b"\nID   "
_FAST = b"//\nID"  # "//" line followed by the next ID line: the common boundary, found ~2x faster
#: decompression failures of a truncated or corrupt download: reported as one malformed entry (the records before
#: the damage are kept); I/O errors of the storage itself still raise (they are worth a retry)
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


class _Salvaging:
    """``read(n)`` over a gzip stream that returns what decompressed before a failure (the failure is raised by
    the next call): ``GzipFile.read`` drops a whole block's worth of good data when the stream breaks inside it."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        self._stream, self._error = stream, None

    def read(self, n: int) -> bytes:
        if self._error is not None:
            e, self._error = self._error, None
            raise e
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self._stream.read1(n - len(out))
            except _STREAM_ERRORS as e:
                if not out:
                    raise
                self._error = e
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)


def open_uniprot(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a local ``.dat`` / ``.dat.gz`` (gzip detected by magic bytes, not only by suffix) for binary reading."""
    f = open(path, "rb")
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    return f


def _clean(
    buf: bytes, pos: int, end: int, base: int, line: int | None, terminated: bool, out: list[RawRecord]
) -> None:
    """Append ``buf[pos:end]`` as one raw record unless it is blank; leading blank lines are skipped."""
    if buf[pos] in _WS:
        j = pos
        while j < end and buf[j] in _WS:
            j += 1
        if j == end:
            return
        s = buf.rfind(b"\n", pos, j) + 1
        if s > pos:
            if line is not None:
                line += buf.count(b"\n", pos, s)
            pos = s
    out.append(RawRecord(base + pos, line, buf[pos:end], terminated))


def _one_segment(buf: bytes, pos: int, end: int, base: int, line: int | None, out: list[RawRecord]) -> None:
    """``buf[pos:end]`` holds no inner ID line: cut it after each ``//`` line; a tail without one is unterminated.

    Normally that gives one terminated record. Text after a ``//`` line (junk, or an entry whose ID line is
    missing) becomes its own raw record, so it is reported instead of swallowing the record before it.
    """
    while pos < end:
        if buf.startswith(b"//", pos):
            t = pos
        else:
            t = buf.find(b"\n//", pos, end)
            t = t + 1 if t >= 0 else -1
        if t < 0:
            _clean(buf, pos, end, base, line, False, out)
            return
        nl = buf.find(b"\n", t, end)
        rec_end = end if nl < 0 else nl + 1
        _clean(buf, pos, rec_end, base, line, True, out)
        if line is not None:
            line += buf.count(b"\n", pos, rec_end)
        pos = rec_end


def split_exhaustive(buf: bytes, pos: int, end: int, base: int, line: int | None) -> list[RawRecord]:
    """Cut ``buf[pos:end]`` at every ``ID`` line and ``//`` line: the careful splitter for damaged input.

    A record that lacks its ``//`` but is followed by an ``ID`` line is cut there (``terminated=False``); text
    after a ``//`` line that is not a record (junk) becomes its own unterminated raw record.
    """
    out: list[RawRecord] = []
    while pos < end:
        k = buf.find(_ID_SPLIT, pos + 1, end)
        cut = end if k < 0 else k + 1
        _one_segment(buf, pos, cut, base, line, out)
        if line is not None:
            line += buf.count(b"\n", pos, cut)
        pos = cut
    return out


def split_raw(raw: RawRecord) -> list[RawRecord]:
    """Re-split one raw record exhaustively (the parser calls this when a record turns out to hold several)."""
    return split_exhaustive(raw.data, 0, len(raw.data), raw.offset, raw.line)


def iter_raw_records(
    stream: BinaryIO,
    start_offset: int = 0,
    start_line: int | None = 1,
    max_bytes: int | None = None,
    block_size: int = _READ_BLOCK,
) -> Iterator[RawRecord]:
    """Yield the raw bytes of each record in ``stream`` without holding more than a few blocks in memory.

    Records are cut at ``//`` + newline + ``ID`` (one fast search per record). Damaged input (a missing ``//``,
    blank lines or junk between records, CRLF line ends) can leave several entries in one raw record; the
    parser notices and re-splits it with :func:`split_exhaustive`, and so does this function when no boundary
    shows up for ``_MAX_PENDING`` bytes. ``start_offset``/``start_line`` describe where the stream's current
    position lies in the source (use them after ``seek`` to a chunk start; ``start_line=None`` when unknown).
    ``max_bytes`` stops reading after that many bytes (a chunk's length).
    """
    if isinstance(stream, gzip.GzipFile):
        stream = _Salvaging(stream)  # type: ignore[assignment]
    buf = b""
    broken: str | None = None  # set when decompression fails: what is left is flushed, then the damage reported
    pos = 0  # start of the unconsumed part of buf
    scan = 0  # where the next boundary search may start
    base = start_offset  # source offset of buf[0]
    line = start_line
    remaining = max_bytes
    eof = False
    while True:
        k = buf.find(_FAST, max(scan, pos))
        while k >= 0 and not ((k == 0 or buf[k - 1] == 10) and buf.startswith(b"   ", k + 5)):
            k = buf.find(_FAST, k + 1)
        if k >= 0:
            end = k + 3
            if buf.startswith(b"ID   ", pos):
                yield RawRecord(base + pos, line, buf[pos:end], True)
            else:
                yield from split_exhaustive(buf, pos, end, base, line)
            if line is not None:
                line += buf.count(b"\n", pos, end)
            pos = end
            scan = end
            continue
        if eof:
            break
        if len(buf) - pos > _MAX_PENDING:  # no fast boundary for a long stretch: cut what is complete
            cut = buf.rfind(_ID_SPLIT, pos + 1)
            if cut > pos:
                yield from split_exhaustive(buf, pos, cut + 1, base, line)
                if line is not None:
                    line += buf.count(b"\n", pos, cut + 1)
                pos = cut + 1
        n = block_size if remaining is None else min(block_size, remaining)
        try:
            chunk = stream.read(n) if n > 0 else b""
        except _STREAM_ERRORS as e:
            broken, chunk = f"input stream ends early or is corrupt after byte {base + len(buf)} ({e})", b""
        if not chunk:
            eof = True
            continue
        if remaining is not None:
            remaining -= len(chunk)
        rescan = max(pos, len(buf) - len(_FAST) - 3)  # a boundary may straddle the old end
        buf = buf[pos:] + chunk
        base += pos
        scan = rescan - pos
        pos = 0
    if pos < len(buf):
        yield from split_exhaustive(buf, pos, len(buf), base, line)
    if broken:
        if line is not None:
            line += buf.count(b"\n", pos)
        yield RawRecord(base + len(buf), line, b"", False, error=broken)


def iter_record_batches(
    stream: BinaryIO,
    batch_bytes: int = 8 << 20,
    start_offset: int = 0,
    start_line: int | None = 1,
) -> Iterator[list[RawRecord]]:
    """Group raw records into batches of about ``batch_bytes`` (the unit shipped to a parsing worker).

    This is the splitter for ``.dat.gz``: gzip cannot be seeked, so one reader streams it and hands out
    batches; offsets are offsets in the uncompressed stream.
    """
    batch: list[RawRecord] = []
    size = 0
    for rec in iter_raw_records(stream, start_offset=start_offset, start_line=start_line):
        batch.append(rec)
        size += len(rec.data)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _next_record_start(f: BinaryIO, target: int, window: int) -> int | None:
    """First record start after a ``//`` line whose ``//`` begins at or after ``target - 1``."""
    pos = max(0, target - 1)
    f.seek(pos)
    data = b"\n" if pos == 0 else b""  # virtual newline: a "//" at byte 0 is at a line start
    data_off = pos - len(data)  # source offset of data[0]
    search = 0
    while True:
        chunk = f.read(window)
        data += chunk
        while True:
            k = data.find(b"\n//", search)
            if k < 0:
                break
            nl = data.find(b"\n", k + 1)
            if nl < 0:
                break  # need more bytes to see the end of the "//" line
            return data_off + nl + 1
        if not chunk:
            return None
        keep = k if k >= 0 else max(0, len(data) - 2)
        data_off += keep
        data = data[keep:]
        search = 0


def find_record_boundaries(fileobj: BinaryIO, approx_chunk_bytes: int) -> list[int]:
    """Byte offsets of record starts splitting a plain (seekable) ``.dat`` into chunks of ~``approx_chunk_bytes``.

    The first offset is 0; chunk ``i`` is ``[offsets[i], offsets[i+1])`` and the last one runs to EOF (see
    :func:`chunk_ranges`). Each offset follows a ``//`` line, so every chunk holds whole records.
    """
    if approx_chunk_bytes <= 0:
        raise ValueError(f"approx_chunk_bytes must be > 0, got {approx_chunk_bytes}")
    size = fileobj.seek(0, os.SEEK_END)
    offsets = [0]
    window = min(max(approx_chunk_bytes, 1 << 16), 1 << 22)
    while True:
        target = offsets[-1] + approx_chunk_bytes
        if target >= size:
            break
        b = _next_record_start(fileobj, target, window)
        if b is None or b >= size:
            break
        offsets.append(b)
    fileobj.seek(0)
    return offsets


def chunk_ranges(fileobj: BinaryIO, approx_chunk_bytes: int) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges of record-aligned chunks covering the whole file."""
    offsets = find_record_boundaries(fileobj, approx_chunk_bytes)
    size = fileobj.seek(0, os.SEEK_END)
    fileobj.seek(0)
    ends = offsets[1:] + [size]
    return [(s, e) for s, e in zip(offsets, ends, strict=True) if e > s]


def line_numbers_at(fileobj: BinaryIO, offsets: list[int], block_size: int = _READ_BLOCK) -> list[int]:
    """1-based line numbers of the given (sorted) byte offsets; one sequential pass counting newlines."""
    fileobj.seek(0)
    out: list[int] = []
    line, done = 1, 0
    for off in offsets:
        if off < done:
            raise ValueError("offsets must be sorted")
        while done < off:
            data = fileobj.read(min(block_size, off - done))
            if not data:
                raise ValueError(f"offset {off} lies past the end of the file")
            line += data.count(b"\n")
            done += len(data)
        out.append(line)
    fileobj.seek(0)
    return out


def iter_chunk_raw(
    path: str | os.PathLike[str], start: int, end: int, start_line: int | None = None
) -> Iterator[RawRecord]:
    """Raw records of the byte range ``[start, end)`` of a plain ``.dat`` (as planned by :func:`chunk_ranges`)."""
    with open(path, "rb") as f:
        f.seek(start)
        yield from iter_raw_records(f, start_offset=start, start_line=start_line, max_bytes=end - start)
