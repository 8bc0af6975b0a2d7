"""The ProtAnno build at scale on damaged input: nothing lost, every damaged entry reported, entries/s, memory.

Input, generated at run time in a temporary folder (never committed): the real entries of
``shared/data/uniprot_corpus`` replicated to ``--entries`` entries, each copy with a new, unique primary
accession (its AC block replaced), spread round-robin over ``--files`` files, half ``.dat`` and half
``.dat.gz``. About ``--damaged`` of the entries are damaged in one of eight ways (bad CRC64, wrong SQ length,
lowercase residues, an invalid residue, an unknown line code, no SQ block, a bad PE line, non-UTF-8 bytes); the
last ``.dat.gz`` is truncated at 70% of its bytes (a download that died).

Checks: every undamaged entry that lies before the truncation point is in the Parquet output exactly once (by
accession); nothing else is; every damaged entry is in ``malformed.jsonl`` at its file and byte offset; the
manifest's counts add up. Figures: entries/s of the whole build (wall), and the peak resident memory of every
Ray worker process (sampled every 0.2 s; a worker runs one task at a time) and of the driver.

    nice -n 19 .venv/bin/python benchmarks/build_scale_benchmark.py --entries 200000

Writes ``benchmarks/results/build_scale_<yyyymm>.md`` (machine, versions, commit, numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import io
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from protclip import runtime  # noqa: E402,F401  (loopback binding before Ray starts)
from protclip.paths import shared_data_dir  # noqa: E402

DAMAGES = ("bad_crc", "sq_length", "lowercase", "invalid_residue", "unknown_code", "no_sq", "bad_pe", "non_utf8")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALNUM = _LETTERS + "0123456789"


def accession(i: int) -> str:
    """A unique, well-formed 10-character UniProt accession for index ``i`` ([A-NR-Z][0-9]([A-Z][A-Z0-9]{2}[0-9]){2})."""
    first = "ABCDEFGHIJKLMNRSTUVWXYZ"[i % 23]
    i //= 23
    parts = [first, str(i % 10)]
    i //= 10
    for _ in range(2):
        parts.append(_LETTERS[i % 26])
        i //= 26
        parts.append(_ALNUM[i % 36])
        i //= 36
        parts.append(_ALNUM[i % 36])
        i //= 36
        parts.append(str(i % 10))
        i //= 10
    assert i == 0, "too many entries for the accession space"
    return "".join(parts)


def corpus_entries() -> list[bytes]:
    """The real corpus entries, each ending with its ``//`` line."""
    data = gzip.decompress((shared_data_dir() / "uniprot_corpus" / "uniprot_corpus.dat.gz").read_bytes())
    return [e + b"//\n" for e in re.split(rb"(?m)^//\n", data) if e.strip()]


_AC_BLOCK = re.compile(rb"^AC   .*\n(?:AC   .*\n)*", re.M)
_SQ = re.compile(rb"^SQ   SEQUENCE +(\d+) AA;(.*?)([0-9A-F]{16}) CRC64;\n", re.M)


def damage(entry: bytes, kind: str) -> bytes:
    """One entry damaged in one way (each makes exactly this entry malformed, nothing else)."""
    m = _SQ.search(entry)
    assert m is not None
    seq_start = m.end()
    if kind == "bad_crc":
        crc = m.group(3)
        return entry[:m.start(3)] + (b"0000000000000000" if crc != b"0" * 16 else b"1" * 16) + entry[m.end(3):]
    if kind == "sq_length":
        return entry[:m.start(1)] + str(int(m.group(1)) + 1).encode() + entry[m.end(1):]
    if kind == "lowercase":
        line_end = entry.index(b"\n", seq_start)
        return entry[:seq_start] + entry[seq_start:line_end].lower() + entry[line_end:]
    if kind == "invalid_residue":
        k = seq_start + 5  # "     " indent, then the first residue
        return entry[:k] + b"*" + entry[k + 1:]
    if kind == "unknown_code":
        return entry[:m.start()] + b"QQ   an unknown line code\n" + entry[m.start():]
    if kind == "no_sq":
        return entry[:m.start()] + b"//\n"
    if kind == "bad_pe":
        return re.sub(rb"^PE   .*$", b"PE   9: Nonsense;", entry, count=1, flags=re.M)
    if kind == "non_utf8":
        return re.sub(rb"^(DE   )", b"\\1\xff\xfe", entry, count=1, flags=re.M)
    raise ValueError(kind)


def generate(folder: Path, n: int, n_files: int, damaged_share: float, seed: int) -> dict:
    """Write the inputs; returns what the build must produce (good accessions, damaged (file, offset) pairs)."""
    from protclip.data.uniprot import UniProtRecord, iter_records

    entries = corpus_entries()
    # a few real entries are rejected by the parser as they are (e.g. an old entry without a PE line): they
    # must be reported like the damaged ones
    rejected = {j for j, e in enumerate(entries)
                if not all(isinstance(r, UniProtRecord) for r in iter_records(io.BytesIO(e), "corpus"))}
    rng = random.Random(seed)
    names = [f"part{i:02d}.dat" if i % 2 == 0 else f"part{i:02d}.dat.gz" for i in range(n_files)]
    plain = {name: bytearray() for name in names}
    good: dict[str, list[tuple[str, int, int]]] = {name: [] for name in names}  # accession, start, end
    bad: dict[str, list[tuple[int, str]]] = {name: [] for name in names}  # offset, kind
    for i in range(n):
        name = names[i % n_files]
        buf = plain[name]
        acc = accession(i)
        entry = _AC_BLOCK.sub(b"AC   " + acc.encode() + b";\n", entries[i % len(entries)], count=1)
        start = len(buf)
        if i % len(entries) in rejected:
            buf += entry
            bad[name].append((start, "as in the corpus"))
        elif rng.random() < damaged_share:
            kind = DAMAGES[sum(len(b) for b in bad.values()) % len(DAMAGES)]
            buf += damage(entry, kind)
            bad[name].append((start, kind))
        else:
            buf += entry
            good[name].append((acc, start, len(buf)))
    truncated = names[-1] if names[-1].endswith(".gz") else names[-2]
    cut_plain = None
    for name in names:
        path = folder / name
        if name.endswith(".gz"):
            data = gzip.compress(bytes(plain[name]), compresslevel=1)
            if name == truncated:
                data = data[: int(len(data) * 0.7)]
                cut_plain = len(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data))
            path.write_bytes(data)
        else:
            path.write_bytes(bytes(plain[name]))
    expected_good = {acc for name in names for acc, _, end in good[name]
                     if name != truncated or end <= cut_plain}
    lost_to_cut = sum(1 for acc, _, end in good[truncated] if end > cut_plain)
    expected_bad = {(name, off) for name in names for off, _ in bad[name] if name != truncated or off < cut_plain}
    return {"good": expected_good, "bad": expected_bad, "truncated": truncated, "lost_to_cut": lost_to_cut,
            "files": names, "bytes": sum(len(b) for b in plain.values()),
            "damaged": sum(1 for b in bad.values() for _, k in b if k in DAMAGES),
            "rejected_as_is": sorted(rejected),
            "kinds": dict(Counter(k for b in bad.values() for _, k in b))}


class MemorySampler(threading.Thread):
    """Peak RSS of every Ray worker process and of this driver, sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            for p in psutil.process_iter(["pid", "name", "cmdline", "memory_info"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if p.pid == me.pid or "default_worker.py" in cmd or cmd.startswith("ray::"):
                        rss = p.info["memory_info"].rss
                        self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
                    continue
            time.sleep(0.2)


def check(out: str, version_uri: str, manifest: dict, expected: dict) -> dict:
    import pyarrow.parquet as pq

    folder = Path(version_uri)
    accs: Counter[str] = Counter()
    for f in sorted(folder.glob("part-*.parquet")):
        accs.update(pq.read_table(f, columns=["accession"])["accession"].to_pylist())
    dup = [a for a, c in accs.items() if c > 1]
    missing = expected["good"] - set(accs)
    extra = set(accs) - expected["good"]
    errors = [json.loads(x) for x in (folder / "malformed.jsonl").read_text().splitlines()]
    reported = {(Path(e["source"]).name, int(e["byte_offset"])) for e in errors}
    unreported = expected["bad"] - reported
    counts_add_up = manifest["seen"] == manifest["parsed"] + manifest["malformed"] == manifest["rows"] + \
        manifest["malformed"]
    return {"kept": len(accs), "duplicates": len(dup), "missing": len(missing), "extra": len(extra),
            "reported": len(errors), "damaged_unreported": len(unreported), "counts_add_up": counts_add_up,
            "reasons": dict(Counter(_reason_kind(e["reason"]) for e in errors))}


def _reason_kind(reason: str) -> str:
    """A reason without its particulars (quoted text, checksums, numbers), so that reasons of a kind count as one."""
    head = reason.split(" (")[0]
    head = re.sub(r"'[^']*'", "_", head)
    head = re.sub(r"\b(?=[0-9A-F]*\d)[0-9A-F]{6,}\b", "_", head)  # CRC64 / MD5 hex digests
    return re.sub(r"\b\d+\b", "_", head)


def machine() -> dict[str, str]:
    import pyarrow
    import ray

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except OSError:
        commit, dirty = "unknown", ""
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"CPU": cpu, "cores": str(os.cpu_count()), "load average (1/5/15 min)": " ".join(
        f"{x:.1f}" for x in os.getloadavg()), "Python": platform.python_version(), "ray": ray.__version__,
        "pyarrow": pyarrow.__version__, "git commit": commit + (" + uncommitted changes" if dirty else "")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--damaged", type=float, default=0.01, help="share of entries damaged")
    ap.add_argument("--num-cpus", type=int, default=2, help="Ray logical CPUs (local instance)")
    ap.add_argument("--chunk-mib", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="result path (default benchmarks/results/build_scale_<yyyymm>.md)")
    args = ap.parse_args(argv)

    import ray

    from protclip.data.build import BuildConfig, run_build
    from protclip.data.holdout import HoldoutConfig

    tmp = Path(tempfile.mkdtemp(prefix="protclip-build-scale-"))
    try:
        t0 = time.time()
        (tmp / "in").mkdir()
        expected = generate(tmp / "in", args.entries, args.files, args.damaged, args.seed)
        gen_s = time.time() - t0
        print(f"generated {args.entries} entries ({expected['bytes'] / 2**30:.2f} GiB plain, "
              f"{expected['damaged']} damaged) in {gen_s:.0f} s", flush=True)
        runtime.init_ray(num_cpus=args.num_cpus)
        sampler = MemorySampler()
        sampler.start()
        out = str(tmp / "protanno")
        t1 = time.time()
        res = run_build(BuildConfig(inputs=[str(tmp / "in")], output=out, chunk_bytes=args.chunk_mib << 20,
                                    holdout=HoldoutConfig(mode="none")))
        build_s = time.time() - t1
        sampler.stop.set()
        sampler.join()
        result = check(out, res.version_uri, res.manifest, expected)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    me = os.getpid()
    workers = sorted((v for k, v in sampler.peak.items() if k != me), reverse=True)
    ok = (result["missing"] == result["duplicates"] == result["extra"] == result["damaged_unreported"] == 0
          and result["counts_add_up"])
    rows = [
        ("entries generated", f"{args.entries:,} over {args.files} files (half .dat, half .dat.gz), "
                              f"{expected['bytes'] / 2**30:.2f} GiB uncompressed"),
        ("damaged entries", f"{expected['damaged']:,} ({', '.join(f'{k} {v}' for k, v in sorted(expected['kinds'].items()))}); "
                            f"{len(expected['rejected_as_is'])} of the corpus entries are rejected as they are "
                            f"(replicated, they count as damaged)"),
        ("truncated file", f"{expected['truncated']} cut at 70% of its bytes: "
                           f"{expected['lost_to_cut']:,} good entries after the cut are unrecoverable"),
        ("good entries kept exactly once", f"{result['kept']:,} of {len(expected['good']):,} expected; "
                                           f"missing {result['missing']}, duplicated {result['duplicates']}, "
                                           f"unexpected {result['extra']}"),
        ("damaged entries reported", f"{len(expected['bad']) - result['damaged_unreported']:,} of "
                                     f"{len(expected['bad']):,} at their file and byte offset; "
                                     f"{result['reported']:,} reports in all"),
        ("manifest counts add up", str(result["counts_add_up"])),
        ("build wall time", f"{build_s:.0f} s ({args.num_cpus} Ray CPUs)"),
        ("entries/s (wall, whole build)", f"{res.manifest['seen'] / build_s:,.0f}"),
        ("peak RSS per Ray worker (max / median)", f"{workers[0] / 2**20:,.0f} MiB / "
                                                    f"{workers[len(workers) // 2] / 2**20:,.0f} MiB over "
                                                    f"{len(workers)} worker processes" if workers else "n/a"),
        ("peak RSS of the driver", f"{sampler.peak.get(me, 0) / 2**20:,.0f} MiB"),
        ("result", "PASS" if ok else "FAIL"),
    ]
    text = ["# ProtAnno build at scale on damaged input", "", f"`{' '.join(sys.argv)}`, "
            f"{dt.date.today().isoformat()}", "", "| | |", "|---|---|"]
    text += [f"| {k} | {v} |" for k, v in rows]
    text += ["", "| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in machine().items()]
    text += ["", f"malformed by reason: `{json.dumps(result['reasons'])}`", ""]
    path = Path(args.out or REPO / "benchmarks" / "results" / f"build_scale_{dt.date.today():%Y%m}.md")
    path.write_text("\n".join(text))
    print("\n".join(text))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
