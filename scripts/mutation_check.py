#!/usr/bin/env python
"""Mutation check of the objective code: every hand-written mutant below must be killed by the model tests.

Each mutant is (file, exact original snippet, replacement, description). The snippet must occur exactly once in
the file; a snippet that is missing or ambiguous is reported as an ERROR (the list must follow the code, not rot).
Mutants are applied to a temporary copy of ``protclip/``, ``tests/`` and ``pyproject.toml`` (the working tree is
never touched), and the model test files run against the copy (``pytest -x``; the copy is first on sys.path and
the cwd). The unmutated copy must pass first. Prints a table mutant -> killed (by which test) / survived / error;
exits 1 if any mutant survives or errors, 2 if the unmutated tests fail.

    python scripts/mutation_check.py                 # all mutants
    python scripts/mutation_check.py --only pda      # mutants whose name contains "pda"
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py --all --only pool   # every killing test, not just the first
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_FILES = ("tests/model/test_model_objectives.py", "tests/model/test_model_losses.py", "tests/model/test_model_gradients.py")
COPIED = ("protclip", "tests", "pyproject.toml")

MODEL = "protclip/model/protclip.py"
HEADS = "protclip/model/heads.py"
PDA = "protclip/model/losses/pda.py"
REGISTRY = "protclip/model/losses/registry.py"  # wires mode and theta into pda_loss
CONFIG = "protclip/model/config.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    description: str


_POOL_P = "return h.mean(dim=1) if self.released else masked_mean(h, residue_mask(ids, am))"
_POOL_T = "return g.mean(dim=1) if self.released else masked_mean(g, am)"
_PDA_MASK = "torch.ones_like(am, dtype=torch.bool) if self.released else residue_mask(ids, am)"
_CUT = "torch.where((s_hat >= threshold) & mask, s_hat"
_SYM = 'symmetric=ctx.model_cfg.mode == "paper"'

MUTANTS: tuple[Mutant, ...] = (
    # --- BSR decoder: softmax axis and text padding mask, per mode
    Mutant("decoder-axis-paper-protein", MODEL, "softmax_over_text=not self.released",
           "softmax_over_text=False", "paper: decoder softmax over the protein axis (released form)"),
    Mutant("decoder-axis-released-text", MODEL, "softmax_over_text=not self.released",
           "softmax_over_text=True", "released: decoder softmax over the text axis (paper form)"),
    Mutant("decoder-axis-swapped", MODEL, "softmax_over_text=not self.released",
           "softmax_over_text=self.released", "decoder axis switch inverted in both modes"),
    Mutant("heads-text-branch-dim1", HEADS, "probs = scores.softmax(dim=-1)", "probs = scores.softmax(dim=1)",
           "text-softmax branch normalises over the protein axis"),
    Mutant("heads-protein-branch-dim-1", HEADS, "probs = scores.softmax(dim=1)", "probs = scores.softmax(dim=-1)",
           "protein-softmax branch (released) normalises over the text axis"),
    Mutant("heads-text-mask-removed", HEADS,
           'scores = scores.masked_fill(~text_mask.bool()[:, None, :], float("-inf"))', "scores = scores",
           "decoder ignores the text padding mask"),
    Mutant("decoder-text-mask-not-passed", MODEL, "None if self.released else text_am)", "None)",
           "paper: the model passes no text padding mask to the decoder"),
    Mutant("decoder-scale-dropped", HEADS, "self.scale = 1.0 / math.sqrt(dim)", "self.scale = 1.0",
           "decoder scores not scaled by 1/sqrt(d)"),
    # --- pooling of protein tokens, text tokens and property sub-texts, per mode
    Mutant("pool-protein-paper-mean", MODEL, _POOL_P, "return h.mean(dim=1)",
           "paper: protein pooled by a plain mean over padding and specials"),
    Mutant("pool-protein-paper-keeps-specials", MODEL, _POOL_P,
           "return h.mean(dim=1) if self.released else masked_mean(h, am)",
           "paper: protein masked mean keeps <cls>/<eos>"),
    Mutant("pool-protein-released-masked", MODEL, _POOL_P, "return masked_mean(h, residue_mask(ids, am))",
           "released: protein pooled by a masked mean"),
    Mutant("pool-text-paper-mean", MODEL, _POOL_T, "return g.mean(dim=1)",
           "paper: text and sub-texts pooled by a plain mean over padding"),
    Mutant("pool-text-released-masked", MODEL, _POOL_T, "return masked_mean(g, am)",
           "released: text and sub-texts pooled by a masked mean"),
    Mutant("gc-protein-forward-mean", MODEL, "self.protein_proj(self._pool_protein(h, ids, am)), dim=-1",
           "self.protein_proj(h.mean(dim=1)), dim=-1", "paper: GC protein features (forward only) plain mean"),
    Mutant("gc-protein-forward-masked", MODEL, "self.protein_proj(self._pool_protein(h, ids, am)), dim=-1",
           "self.protein_proj(masked_mean(h, residue_mask(ids, am))), dim=-1",
           "released: GC protein features (forward only) masked mean"),
    Mutant("gc-text-forward-mean", MODEL, "self.text_proj(self._pool_text(g, text_am))",
           "self.text_proj(g.mean(dim=1))", "paper: GC text features (forward only) plain mean"),
    Mutant("gc-text-forward-masked", MODEL, "self.text_proj(self._pool_text(g, text_am))",
           "self.text_proj(masked_mean(g, text_am))", "released: GC text features (forward only) masked mean"),
    Mutant("subtext-paper-mean", MODEL, "u = self.text_proj(self._pool_text(g, flat_am))",
           "u = self.text_proj(g.mean(dim=1))", "paper: property sub-texts pooled by a plain mean"),
    Mutant("subtext-released-masked", MODEL, "u = self.text_proj(self._pool_text(g, flat_am))",
           "u = self.text_proj(masked_mean(g, flat_am))", "released: property sub-texts pooled by a masked mean"),
    Mutant("encode-protein-mean", MODEL, "self.protein_proj(self._pool_protein(h, input_ids, attention_mask))",
           "self.protein_proj(h.mean(dim=1))", "paper: encode_protein (eval embedder) plain mean"),
    Mutant("encode-text-mean", MODEL, "self.text_proj(self._pool_text(g, attention_mask))",
           "self.text_proj(g.mean(dim=1))", "paper: encode_text (eval embedder) plain mean"),
    Mutant("residue-mask-keeps-eos", MODEL, "& (input_ids != ESM_CLS) & (input_ids != ESM_EOS)",
           "& (input_ids != ESM_CLS)", "residue mask keeps <eos> (protein pooling and PDA)"),
    Mutant("masked-mean-divides-by-length", MODEL, "m.sum(dim=1).clamp_min(1.0)", "hidden.shape[1]",
           "masked mean divides by the padded length"),
    # --- PDA token mask
    Mutant("pda-mask-paper-keeps-specials", MODEL, _PDA_MASK,
           "torch.ones_like(am, dtype=torch.bool) if self.released else am.bool()",
           "paper: <cls>/<eos> enter dynamic segments"),
    Mutant("pda-mask-paper-all", MODEL, _PDA_MASK, "torch.ones_like(am, dtype=torch.bool)",
           "paper: specials and padding enter dynamic segments"),
    Mutant("pda-mask-released-residues", MODEL, _PDA_MASK, "residue_mask(ids, am)",
           "released: dynamic segments restricted to residues"),
    Mutant("pda-min-ignores-mask", PDA, "s_min = s.masked_fill(~mask, big).amin(dim=-1, keepdim=True)",
           "s_min = s.amin(dim=-1, keepdim=True)", "min-max minimum taken over masked-out tokens too"),
    Mutant("pda-max-ignores-mask", PDA, "s_max = s.masked_fill(~mask, -big).amax(dim=-1, keepdim=True)",
           "s_max = s.amax(dim=-1, keepdim=True)", "min-max maximum taken over masked-out tokens too"),
    Mutant("pda-cut-ignores-mask", PDA, _CUT, "torch.where((s_hat >= threshold), s_hat",
           "masked-out tokens above theta are pooled"),
    # --- PDA min-max, theta cut, weights
    Mutant("pda-minmax-removed", PDA, "s_hat = (s - s_min) / (s_max - s_min).clamp_min(1e-12)", "s_hat = s",
           "no min-max normalisation of the scores"),
    Mutant("pda-cut-removed", PDA, _CUT, "torch.where(mask, s_hat", "no theta cut"),
    Mutant("pda-weights-not-renormalised", PDA,
           "weights = s_hat / s_hat.sum(dim=-1, keepdim=True).clamp_min(1e-12)", "weights = s_hat",
           "pooling weights not renormalised to sum 1"),
    Mutant("pda-theta-default-0.5", CONFIG, "pda_threshold: float = 0.3", "pda_threshold: float = 0.5",
           "theta 0.5 instead of 0.3"),
    Mutant("pda-theta-not-wired", REGISTRY, "threshold=ctx.model_cfg.pda_threshold", "threshold=0.5",
           "the loss ignores model.pda_threshold"),
    # --- PDA direction, as wired from model.mode
    Mutant("pda-direction-inverted", REGISTRY, _SYM, 'symmetric=ctx.model_cfg.mode != "paper"',
           "symmetric in released, one-sided in paper"),
    Mutant("pda-direction-always-symmetric", REGISTRY, _SYM, "symmetric=True", "released PDA symmetric"),
    Mutant("pda-direction-never-symmetric", REGISTRY, _SYM, "symmetric=False", "paper PDA one-sided"),
    Mutant("pda-q2e-is-e2q", PDA, "logits.transpose(1, 2).reshape(b * k, k)", "logits.reshape(b * k, k)",
           "the q->e direction evaluates e->q (the released bug in paper mode)"),
    # --- temperatures
    Mutant("gc-temperature-0.1", CONFIG, "temperature_init: float = 0.07", "temperature_init: float = 0.1",
           "GC temperature initialised at 0.1"),
    Mutant("pda-temperature-0.07", CONFIG, "local_temperature_init: float = 0.1",
           "local_temperature_init: float = 0.07", "PDA temperature initialised at 0.07"),
    Mutant("gc-scale-from-pda-temperature", MODEL, "math.log(1.0 / cfg.temperature_init)",
           "math.log(1.0 / cfg.local_temperature_init)", "logit_scale initialised from the PDA temperature"),
    Mutant("pda-scale-from-gc-temperature", MODEL, "math.log(1.0 / cfg.local_temperature_init)",
           "math.log(1.0 / cfg.temperature_init)", "local_logit_scale initialised from the GC temperature"),
    Mutant("pda-uses-gc-scale", MODEL, "self.local_logit_scale.clamp(max=self._max_log_scale).exp()",
           "self.logit_scale.clamp(max=self._max_log_scale).exp()", "PDA multiplied by the GC scale"),
    # --- more
    Mutant("prototype-eval-ignores-tau", HEADS, "assign = (logits / self.tau).softmax(dim=-1)",
           "assign = logits.softmax(dim=-1)", "eval prototype assignment without the 0.9 temperature"),
    Mutant("bsr-no-grad-in-paper", MODEL, "with torch.no_grad() if self.released else contextlib.nullcontext():",
           "with torch.no_grad():", "paper: BSR encoder/decoder get no gradient (released quirk)"),
)  # fmt: skip


def shared_data_dir() -> str | None:
    """The real sample data the tests read (the copy lives elsewhere, so point it there explicitly)."""
    env = os.environ.get("PROTCLIP_SHARED_DATA")
    for c in [Path(env)] if env else [REPO.parent / "shared" / "data", REPO / "shared" / "data"]:
        if c.is_dir():
            return str(c.resolve())
    return None


def make_copy() -> Path:
    root = Path(tempfile.mkdtemp(prefix="protclip-mutants-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=ignore)
        else:
            shutil.copy2(src, root / name)
    return root


def env_for(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never meet a mutant's cached bytecode
    data = shared_data_dir()
    if data:
        env["PROTCLIP_SHARED_DATA"] = data
    return env


def run_tests(root: Path, timeout: float, stop_first: bool = True) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", *(["-x"] if stop_first else []), "-q", "-p", "no:cacheprovider",
           "-rfE", *TEST_FILES]  # fmt: skip
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=env_for(root), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        return -1, f"timeout after {timeout:.0f} s\n{e.stdout or ''}", time.monotonic() - t0
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def failures(output: str) -> list[str]:
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)


def check_snippet(root: Path, mutant: Mutant) -> str:
    path = root / mutant.file
    if not path.is_file():
        return f"file {mutant.file} not found"
    n = path.read_text().count(mutant.original)
    return "" if n == 1 else f"snippet found {n} times in {mutant.file} (must be exactly once)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="run mutants whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    ap.add_argument(
        "--all", action="store_true", help="run every test per mutant (no -x) and list all killers"
    )
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(s in m.name for s in args.only)]
    if args.list:
        for m in mutants:
            print(f"{m.name:36s} {m.file:34s} {m.description}")
        return 0
    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "duplicate mutant names"

    root = make_copy()
    results: list[tuple[Mutant, str, str, float]] = []
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import protclip, tests.helpers.model as h; print(protclip.__file__, h.__file__)"],
            cwd=root, env=env_for(root), capture_output=True, text=True,
        )  # fmt: skip
        if probe.returncode or any(not p.startswith(str(root)) for p in probe.stdout.split()):
            print(f"the copy is not the code under test: {probe.stdout.strip()} {probe.stderr.strip()}")
            return 2
        rc, output, secs = run_tests(root, args.timeout)
        if rc != 0:
            print(output[-4000:])
            print(f"unmutated tests fail (rc {rc}): fix them before checking mutants")
            return 2
        print(f"baseline: {', '.join(TEST_FILES)} pass on the unmutated copy ({secs:.0f} s)", flush=True)
        for m in mutants:
            err = check_snippet(root, m)
            if err:
                results.append((m, "ERROR", err, 0.0))
                print(f"  {m.name}: ERROR {err}", flush=True)
                continue
            path = root / m.file
            original = path.read_text()
            try:
                path.write_text(original.replace(m.original, m.replacement, 1))
                rc, output, secs = run_tests(root, args.timeout, stop_first=not args.all)
            finally:
                path.write_text(original)
            tests = failures(output)
            if rc == 0:
                status, detail = "SURVIVED", ""
            elif rc == 1 and tests:
                status, detail = "killed", ", ".join(tests)
            else:  # collection error, crash, timeout: the mutant is not a valid probe
                status, detail = "ERROR", f"pytest rc {rc}: " + (output.strip().splitlines() or [""])[-1]
            results.append((m, status, detail, secs))
            print(f"  {m.name}: {status} {detail} ({secs:.0f} s)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    w = max(len(m.name) for m, *_ in results) if results else 10
    print(f"{'mutant':{w}s}  {'status':8s}  killed by / reason")
    print("-" * (w + 60))
    for m, status, detail, _ in results:
        print(f"{m.name:{w}s}  {status:8s}  {detail}")
    bad = [m.name for m, status, *_ in results if status != "killed"]
    print(
        f"\n{len(results) - len(bad)}/{len(results)} killed"
        + (f"; not killed: {', '.join(bad)}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
