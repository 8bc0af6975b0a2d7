"""The GPU benchmark scripts on a CPU: ``benchmarks/gpu_packing.py --tiny-cpu-smoke`` runs the script's own code
path (one-rank process group, FSDP2, packed vs padded, sdpa and eager, the length probe) with tiny towers, so a
GPU machine does not find the trivial bugs first. Its numbers mean nothing; the rows and their accounting do.
The out-of-memory handling is driven with a stand-in model that raises the allocator's error.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_packing.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_packing_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_packing_cpu_smoke_reports_every_row(tmp_path):
    out = tmp_path / "gpu_packing_smoke.md"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny-cpu-smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows = {(r["attention"], r["packed"]): r for r in records if "packed" in r}
    assert set(rows) == {(b, p) for b in ("sdpa", "eager") for p in (False, True)}
    for backend in ("sdpa", "eager"):
        padded, packed = rows[(backend, False)], rows[(backend, True)]
        assert padded["oom"] is None and packed["oom"] is None
        # the same rows, laid out two ways: same pairs and model FLOPs (FLOPs count real tokens only)
        assert padded["pairs"] == packed["pairs"] >= 2
        assert padded["tflops_per_step"] == packed["tflops_per_step"] > 0
        # packed computes no padding; the padded batch of rows of different lengths does
        assert packed["padded_tokens_per_s"] == packed["unpadded_tokens_per_s"]
        assert padded["padded_tokens_per_s"] > padded["unpadded_tokens_per_s"]
        assert math.isfinite(padded["loss"]) and math.isfinite(packed["loss"])
        assert padded["mfu"] is None and padded["peak_mem_gib"] is None  # CPU: no peak FLOPs, no CUDA allocator
    probe = {r["attention"]: r for r in records if "max_protein_len" in r}
    assert set(probe) == {"sdpa", "eager"}
    assert all(r["max_protein_len"] == 128 and r["first_oom"] is None for r in probe.values())  # longest tried
    text = out.read_text()
    assert text == proc.stdout[proc.stdout.index("# Packed vs padded"):].rstrip("\n") + "\n"
    for backend in ("sdpa", "eager"):
        assert f"| {backend} | padded | {rows[(backend, False)]['pairs']} |" in text
        assert f"| {backend} | packed | {rows[(backend, True)]['pairs']} |" in text
        assert f"| {backend} | >= 128 (longest tried) |" in text


class _OOMAbove:
    """Stand-in for the script's Bench: steps succeed up to ``limit`` protein tokens, then the allocator fails."""

    built = 0

    def __init__(self, attention, ac, device, limit=100):
        type(self).built += 1
        self.attention, self.limit = attention, limit

    def measure(self, batch, packed, steps, warmup):
        if batch["protein_input_ids"].shape[-1] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)")
        return {"attention": self.attention, "packed": packed, "pairs": 1}


def test_out_of_memory_becomes_a_row_and_the_probe_stops_at_it(monkeypatch):
    gp = _load_script()
    cpu = torch.device("cpu")
    monkeypatch.setattr(gp, "Bench", _OOMAbove)
    batch = gp.rows_batch([90, 150, 40], cpu)
    row = gp.run("eager", batch, packed=True, steps=1, warmup=0, ac=False, device=cpu)
    assert row["oom"].startswith("CUDA out of memory") and row["pairs"] == 3 and row["packed"] is True
    _OOMAbove.built = 0
    probe = gp.longest_protein("eager", False, cpu, (200, 50, 100, 400))
    assert probe["max_protein_len"] == 100 and probe["first_oom"].startswith("CUDA out of memory")
    assert _OOMAbove.built == 1  # one model per backend for the whole probe
    late = gp.longest_protein("eager", False, cpu, (50, 100), deadline=0.0)
    assert late["max_protein_len"] is None and late["not_tried_from"] == 50
    text = gp.markdown({"versions": {}, "args": {}, "skipped": [], "memory_cap": None, "not_run": [], "wall_s": 1.0,
                        "rows": [row], "maxlen": [probe]})  # fmt: skip
    assert "| eager | packed | 3 | out of memory: CUDA out of memory" in text
    assert "| eager | 100 | CUDA out of memory" in text


def test_other_errors_are_not_taken_for_out_of_memory(monkeypatch):
    gp = _load_script()

    class _Broken(_OOMAbove):
        def measure(self, batch, packed, steps, warmup):
            raise RuntimeError("shape mismatch in attention")

    monkeypatch.setattr(gp, "Bench", _Broken)
    cpu = torch.device("cpu")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gp.run("sdpa", gp.rows_batch([40], cpu), packed=False, steps=1, warmup=0, ac=False, device=cpu)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gp.longest_protein("sdpa", False, cpu, (64,))
