"""A fuzzed UniProt flat file: the real samples plus damaged units at known byte offsets, for the bad-input
reliability tests (parser, build job, training on fuzzed input)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

AA = "ACDEFGHIKLMNPQRSTVWY"
LONG_LEN = 100_000


# ------------------------------------------------------------------------------------------------ fuzz file


def crc64(seq: str) -> str:
    """SWISS-PROT CRC64, written independently of the parser's vectorised one."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xD800000000000000 if c & 1 else c >> 1
        table.append(c)
    crc = 0
    for b in seq.encode():
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return f"{crc:016X}"


def split_records(data: bytes) -> list[bytes]:
    return [r + b"\n//\n" for r in data.split(b"\n//\n")[:-1]] if data.endswith(b"\n//\n") else []


def accession_of(rec: bytes) -> str:
    m = re.search(rb"^AC   (\w+);", rec, re.M)
    assert m, rec[:80]
    return m.group(1).decode()


def with_sequence(rec: bytes, acc: str, seq: str, *, sq_len: int | None = None, crc: str | None = None) -> bytes:
    """A copy of ``rec`` with a new accession and sequence (ID/SQ lines, CRC rebuilt; FT lines dropped)."""
    text = rec.decode()
    head = text[: text.index("\nSQ   ") + 1]
    lines = [ln for ln in head.splitlines() if not ln.startswith(("FT   ", "AC   "))]
    n = len(seq) if sq_len is None else sq_len
    lines[0] = re.sub(r"\s+\d+ AA\.$", f"{n:>9} AA.", lines[0])
    lines.insert(1, f"AC   {acc};")
    body = [f"SQ   SEQUENCE {n:>5} AA;  {110 * n:>6} MW;  {crc or crc64(seq)} CRC64;"]
    for i in range(0, len(seq), 60):
        body.append("     " + " ".join(seq[j : j + 10] for j in range(i, min(i + 60, len(seq)), 10)))
    return ("\n".join(lines + body) + "\n//\n").encode()


@dataclass
class Unit:
    kind: str  # "good" or the kind of damage
    data: bytes
    accession: str | None = None  # good units
    sequence: str | None = None  # good synthetic units: the exact sequence to find back
    reason: str | None = None  # bad units: a regex the reported reason must match


@dataclass
class Fuzz:
    data: bytes
    units: list[Unit]
    offsets: list[int]

    @property
    def good(self) -> list[tuple[int, Unit]]:
        return [(o, u) for o, u in zip(self.offsets, self.units, strict=True) if u.kind == "good"]

    @property
    def bad(self) -> list[tuple[int, Unit]]:
        return [(o, u) for o, u in zip(self.offsets, self.units, strict=True) if u.kind != "good"]


def make_fuzz(real: bytes, seed: int = 7) -> Fuzz:
    """Real records interleaved with one damaged unit of each kind (and three synthetic good records)."""
    rng = random.Random(seed)
    recs = split_records(real)
    assert len(recs) == 103
    tmpl = recs[0]  # TrEMBL entry without FT lines
    seq0 = "".join(rng.choice(AA) for _ in range(120))

    def cut_line(r: bytes, frac: float) -> bytes:  # at a line start (the record simply stops)
        return r[: r.rfind(b"\n", 0, int(len(r) * frac)) + 1]

    def cut_mid(r: bytes, frac: float) -> bytes:  # in the middle of a line (no newline at the end)
        k = int(len(r) * frac)
        while r[k - 1 : k] in (b"\n", b" "):
            k += 1
        return r[:k]

    def junk(n: int, newline_end: bool) -> bytes:
        b = bytes(rng.randrange(256) for _ in range(n)).replace(b"//", b"/x").replace(b"ID   ", b"IX   ")
        return b.rstrip(b"\n") + b"\n" if newline_end else b.replace(b"\n", b" ")

    bad_units = [
        Unit("truncated_at_line", cut_line(recs[5], 0.5), reason="truncated"),
        Unit("truncated_mid_line", cut_mid(recs[6], 0.4), reason="."),
        Unit("garbage_lines", b"this is not a UniProt line\n12345 garbage\n\tmore junk\n", reason="."),
        Unit("binary_junk", junk(700, newline_end=True), reason="."),
        Unit("binary_junk_no_newline", junk(300, newline_end=False), reason="."),
        Unit("unknown_line_code", recs[7].replace(b"\nDE   ", b"\nQQ   mystery line\nDE   ", 1), reason="line code"),
        Unit("wrong_sq_length", with_sequence(tmpl, "Q9RLB1", seq0, sq_len=121), reason="length"),
        Unit("wrong_id_length", with_sequence(tmpl, "Q9RLB2", seq0).replace(b"      120 AA.", b"      999 AA.", 1),
             reason="length"),
        Unit("bad_crc", with_sequence(tmpl, "Q9RLB3", seq0, crc="0123456789ABCDEF"), reason="CRC64"),
        Unit("lowercase_residues", with_sequence(tmpl, "Q9RLB4", seq0[:60] + seq0[60:].lower()),
             reason="invalid residue"),
        Unit("invalid_residues", with_sequence(tmpl, "Q9RLB5", seq0[:50] + "J*1" + seq0[53:]),
             reason="invalid residue"),
        Unit("missing_id_line", recs[8][recs[8].index(b"\n") + 1 :], reason="ID"),
        Unit("missing_sq_block", re.sub(rb"\nSQ   .*?\n//\n", b"\n//\n", recs[9], flags=re.S), reason="SQ"),
        Unit("non_utf8_bytes", recs[10].replace(b"\nDE   ", b"\nDE   \xff\xfe\xc3(", 1), reason="."),
        Unit("empty_record", b"//\n", reason="empty"),
        Unit("bad_pe_line", re.sub(rb"\nPE   \d", b"\nPE   9", recs[11], count=1), reason="PE"),
    ]  # fmt: skip
    synthetic = [
        Unit("good", with_sequence(tmpl, "Q9REL1", s := "".join(rng.choice(AA) for _ in range(LONG_LEN))),
             "Q9REL1", s),
        Unit("good", with_sequence(tmpl, "Q9REL2", s2 := seq0[:40] + "UOBZX" + seq0[45:]), "Q9REL2", s2),
        Unit("good", recs[12].replace(b"\n", b"\r\n"), accession_of(recs[12])),  # CRLF: accepted
    ]  # fmt: skip
    damaged = {5, 6, 7, 8, 9, 10, 11, 12}  # used above in damaged (or re-encoded) form
    goods = [Unit("good", r, accession_of(r)) for i, r in enumerate(recs) if i not in damaged]
    units: list[Unit] = [Unit("leading_junk", b"junk before the first entry\n", reason=".")]
    pool = synthetic + goods[:-1]
    for i, u in enumerate(bad_units):  # good, bad, good, bad, ...: every bad unit is followed by a good one
        units += [pool[i], u]
    units += pool[len(bad_units):]
    units.append(Unit("truncated_at_eof", cut_mid(goods[-1].data, 0.6), reason="truncated"))
    offsets, pos = [], 0
    for u in units:
        offsets.append(pos)
        pos += len(u.data)
    return Fuzz(b"".join(u.data for u in units), units, offsets)
