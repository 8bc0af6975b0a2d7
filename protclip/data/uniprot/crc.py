"""SWISS-PROT CRC64 (the checksum on every ``SQ`` line), fast enough to check every record.

CRC-64 with the ISO 3309 polynomial x^64 + x^4 + x^3 + x + 1, bit-reflected, initial value 0, no final xor.

Why not the textbook byte loop: at ~60 ns per residue in CPython it would cost more than parsing the rest of
the entry. The CRC is linear over GF(2) and, with initial value 0, leading zero bytes do not change it. So the
sequence is left-padded to a multiple of ``_B`` bytes, each block's CRC is one numpy ``take`` + xor-reduce over a
precomputed ``(_B, 256)`` table (``take`` on the flattened table: 2-D fancy indexing costs ~5x more) (contribution of byte b followed by d zero bytes), and the blocks are chained
in Python with a "feed _B zero bytes" operator (8 table lookups per block). ~10x faster than the byte loop.
"""

from __future__ import annotations

import numpy as np

_POLY = 0xD800000000000000
_B = 128


def _byte_table() -> list[int]:
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t.append(c)
    return t


_T0 = _byte_table()


def _feed_zeros(state: int, n: int) -> int:
    for _ in range(n):
        state = _T0[state & 0xFF] ^ (state >> 8)
    return state


def _build_block_tables() -> tuple[np.ndarray, list[list[int]]]:
    table = np.zeros((_B, 256), dtype=np.uint64)
    row = list(_T0)  # byte b followed by d zero bytes, for d = 0, 1, ...
    for d in range(_B):
        table[_B - 1 - d] = row  # indexed by offset inside the block: offset o is followed by _B-1-o bytes
        row = [_T0[v & 0xFF] ^ (v >> 8) for v in row]
    shift = [[_feed_zeros(b << (8 * j), _B) for b in range(256)] for j in range(8)]
    return table, shift


_BLOCK_TABLE, _SHIFT = _build_block_tables()
_FLAT = _BLOCK_TABLE.reshape(-1)
_OFFSETS = np.arange(_B, dtype=np.intp) * 256  # flat index of (offset, byte) = offset * 256 + byte
_ZEROS = bytes(_B)


def crc64_bytes(data: bytes) -> int:
    """CRC64 of raw bytes as an integer."""
    n = len(data)
    if n == 0:
        return 0
    nb = -(-n // _B)
    a = np.frombuffer(_ZEROS[: nb * _B - n] + data, dtype=np.uint8).reshape(nb, _B)
    blocks = np.bitwise_xor.reduce(_FLAT.take(a + _OFFSETS), axis=1).tolist()
    z0, z1, z2, z3, z4, z5, z6, z7 = _SHIFT
    crc = 0
    for v in blocks:
        crc = (
            z0[crc & 255]
            ^ z1[(crc >> 8) & 255]
            ^ z2[(crc >> 16) & 255]
            ^ z3[(crc >> 24) & 255]
            ^ z4[(crc >> 32) & 255]
            ^ z5[(crc >> 40) & 255]
            ^ z6[(crc >> 48) & 255]
            ^ z7[crc >> 56]
            ^ v
        )
    return crc


def crc64_reference(data: bytes) -> int:
    """Byte-at-a-time reference implementation (tests compare the fast path against it)."""
    crc = 0
    for byte in data:
        crc = _T0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc64(seq: str) -> str:
    """CRC64 of a sequence as printed on the SQ line: 16 upper-case hex digits."""
    return f"{crc64_bytes(seq.encode('ascii')):016X}"


def crc64_many(seqs: list[bytes]) -> list[int]:
    """CRC64 of many byte strings with one numpy gather for all of them (the per-call numpy overhead of
    :func:`crc64_bytes` dominates for typical protein lengths, so batches are verified together)."""
    if not seqs:
        return []
    parts: list[bytes] = []
    counts: list[int] = []
    for d in seqs:
        nb = -(-len(d) // _B)
        counts.append(nb)
        if nb:
            parts.append(_ZEROS[: nb * _B - len(d)])
            parts.append(d)
    total = sum(counts)
    if total == 0:
        return [0] * len(seqs)
    a = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(total, _B)
    blocks = np.bitwise_xor.reduce(_FLAT.take(a + _OFFSETS), axis=1).tolist()
    z0, z1, z2, z3, z4, z5, z6, z7 = _SHIFT
    out: list[int] = []
    i = 0
    for nb in counts:
        crc = 0
        for v in blocks[i : i + nb]:
            crc = (
                z0[crc & 255]
                ^ z1[(crc >> 8) & 255]
                ^ z2[(crc >> 16) & 255]
                ^ z3[(crc >> 24) & 255]
                ^ z4[(crc >> 32) & 255]
                ^ z5[(crc >> 40) & 255]
                ^ z6[(crc >> 48) & 255]
                ^ z7[crc >> 56]
                ^ v
            )
        out.append(crc)
        i += nb
    return out
