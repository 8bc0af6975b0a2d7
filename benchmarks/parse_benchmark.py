"""Entries/s of protclip's UniProt flat-file parser against Biopython's Bio.SwissProt, one process each.

The input is generated on the fly: the 103 real entries of shared/data/uniprot_samples repeated to
``--entries`` entries (default 300k, ~5.4 GB) in a temporary plain ``.dat``. Both parsers read that same file;
the record objects are dropped as they come (streaming). We report wall-clock and CPU-time rates: on a shared
machine the CPU-time rate is the steadier per-core number.

    .venv/bin/python benchmarks/parse_benchmark.py --entries 100000

Writes ``benchmarks/results/parse_<yyyymm>.md`` (machine, versions, git commit, numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from protclip.data.schema import record_to_row  # noqa: E402
from protclip.data.uniprot import UniProtRecord, iter_records  # noqa: E402
from protclip.paths import uniprot_samples_dat  # noqa: E402


def make_input(path: Path, n_entries: int) -> int:
    """Write ``n_entries`` entries (the real ones, cycled) to ``path``; returns the byte size."""
    data = uniprot_samples_dat().read_bytes()
    entries = [p + b"//\n" for p in data.split(b"//\n") if p.strip()]
    full, rest = divmod(n_entries, len(entries))
    block = b"".join(entries)
    with open(path, "wb") as f:
        for _ in range(full):
            f.write(block)
        f.write(b"".join(entries[:rest]))
    return path.stat().st_size


def timed(fn: Callable[[], tuple[int, int]]) -> dict[str, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    n, bad = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"n": n, "bad": bad, "wall": wall, "cpu": cpu, "rate_wall": n / wall, "rate_cpu": n / cpu}


def run_ours(path: Path, verify_crc: bool = True, rows: bool = False) -> tuple[int, int]:
    n = bad = 0
    with open(path, "rb") as f:
        for res in iter_records(f, path.name, verify_crc=verify_crc):
            n += 1
            if not isinstance(res, UniProtRecord):
                bad += 1
            elif rows:
                record_to_row(res)
    return n, bad


def run_biopython(path: Path) -> tuple[int, int]:
    from Bio import SwissProt

    n = 0
    with open(path) as f:
        for _ in SwissProt.parse(f):
            n += 1
    return n, 0


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "none (no commit yet)"
        )
    except (OSError, subprocess.SubprocessError):
        commit = "unavailable"
    try:
        import Bio

        bio = Bio.__version__
    except ImportError:
        bio = "not installed"
    import numpy

    load = _load()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "biopython": bio,
        "numpy": numpy.__version__,
        "commit": commit,
        "platform": platform.platform(),
        "load": load,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=300_000, help="entries in the generated file")
    ap.add_argument("--tmpdir", default=None, help="where to write the generated .dat (default: system temp)")
    ap.add_argument("--skip-biopython", action="store_true", help="only time protclip's parser")
    ap.add_argument(
        "--out", default=None, help="markdown result path (default benchmarks/results/parse_<yyyymm>.md)"
    )
    args = ap.parse_args(argv)

    info = machine()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        path = Path(tmp) / "bench.dat"
        t0 = time.perf_counter()
        size = make_input(path, args.entries)
        print(
            f"generated {args.entries} entries, {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        for name, fn in [
            ("protclip (CRC64 checked, default)", lambda: run_ours(path)),
            ("protclip (no CRC64 check)", lambda: run_ours(path, verify_crc=False)),
            ("protclip + record_to_row (build path)", lambda: run_ours(path, rows=True)),
            ("Bio.SwissProt", lambda: run_biopython(path)),
        ]:
            if name == "Bio.SwissProt" and args.skip_biopython:
                continue
            r = timed(fn)
            assert r["n"] == args.entries and r["bad"] == 0, (name, r)
            results[name] = r
            print(
                f"{name:40s} {r['rate_wall']:9.0f} entries/s wall  {r['rate_cpu']:9.0f} entries/s CPU",
                flush=True,
            )
    info["load_after"] = _load()

    bio = results.get("Bio.SwissProt")
    lines = [
        f"# UniProt flat-file parsing: protclip vs Bio.SwissProt ({dt.date.today():%Y-%m})",
        "",
        f"Run {dt.datetime.now():%Y-%m-%d %H:%M}, `benchmarks/parse_benchmark.py --entries {args.entries}`.",
        f"Input: the 103 real entries of `shared/data/uniprot_samples` (91 Swiss-Prot, feature-rich) repeated to "
        f"{args.entries} entries, {size / 1e9:.2f} GB plain `.dat`. One process each, records streamed and dropped.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {info['cpu']} |",
        f"| cores | {info['cores']} (single process used) |",
        f"| load average (1/5/15 min) | before: {info['load']}; after: {info['load_after']} |",
        f"| platform | {info['platform']} |",
        f"| Python | {info['python']} |",
        f"| Biopython | {info['biopython']} |",
        f"| numpy | {info['numpy']} |",
        f"| git commit | {info['commit']} |",
        "",
        "| parser | entries/s (wall) | entries/s (CPU time) | x Bio.SwissProt (wall) | x Bio.SwissProt (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        rel_w = f"{r['rate_wall'] / bio['rate_wall']:.2f}" if bio else "n/a"
        rel_c = f"{r['rate_cpu'] / bio['rate_cpu']:.2f}" if bio else "n/a"
        lines.append(f"| {name} | {r['rate_wall']:,.0f} | {r['rate_cpu']:,.0f} | {rel_w} | {rel_c} |")
    lines += [
        "",
        "Entries/s per core = entries/s of the single process. CPU-time rates are reported because the",
        "benchmark machine may be shared: wall-clock rates then depend on the other load.",
        "",
    ]
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"parse_{dt.date.today():%Y%m}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
