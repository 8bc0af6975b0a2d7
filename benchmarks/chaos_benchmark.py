"""Repeated faults in one pre-training run: three training workers SIGKILLed at random steps, then the driver.

A local Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``, so the cluster outlives the driver) runs
``jobs/pretrain.py`` as a real driver process on the real sample entries (tiny random towers, deterministic
split, checkpoints every ``--ckpt-every`` steps, ``train.max_failures`` = number of worker kills).

1. Reference: the run uninterrupted.
2. Chaos: the same run under another name. The benchmark follows the MLflow ``train/loss`` history; when the most
   recently logged step reaches the next fault step it SIGKILLs one Ray Train worker process (chosen at
   random), three times; then it SIGKILLs the driver itself and starts the job again (same name: it resumes from
   the last complete checkpoint and continues the same MLflow run).

Checks: the run completes; every step 1..N is logged; every logged value (a step re-run after a restart is logged
again) equals the reference's at that step, so no step is logged twice with different values.

    nice -n 19 .venv/bin/python benchmarks/chaos_benchmark.py --steps 12

Writes ``benchmarks/results/chaos_<yyyymm>.md`` (machine, versions, commit, numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from protclip import runtime  # noqa: E402,F401  (loopback switches before Ray is imported)


def overrides(data: str, runs: str, name: str, steps: int, ckpt_every: int, kills: int) -> list[str]:
    ov = {
        "data.uri": data, "data.sampling.mode": "none", "data.micro_batch_size": "4",
        "data.max_protein_length": "64", "data.max_text_length": "64", "data.max_subtext_length": "32",
        "data.bucket_window": "16", "data.shuffle_buffer": "32", "data.val_fraction": "0.1",
        "data.num_epochs": "2", "data.split": "deterministic", "data.map_num_cpus": "0.5", "data.holdout": "hash",
        "model.protein_model": "random", "model.text_model": "random", "model.attention": "sdpa",
        "model.projection_dim": "32", "model.proto_num": "16",
        "train.num_workers": "2", "train.accum_steps": "1", "train.lr": "1e-3", "train.warmup_steps": "2",
        "train.max_steps": str(steps), "train.ckpt_every": str(ckpt_every), "train.val_every": "0",
        "train.log_every": "1", "train.keep_checkpoints": "2", "train.max_failures": str(kills),
        "train.export": "false", "storage.storage_path": runs, "storage.name": name,
        "tracking.experiment": "chaos",
    }  # fmt: skip
    return [a for k, v in ov.items() for a in (f"--{k}", v)]


def start_job(address: str, tracking: str, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": address, "MLFLOW_TRACKING_URI": tracking, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "jobs/pretrain.py", *args], cwd=REPO, env=env,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)


def history(tracking: str, name: str) -> list[tuple[int, float, int]]:
    """(step, value, timestamp) of ``train/loss`` of the run named ``name`` (empty before it exists)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("chaos")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    out = []
    for r in runs:
        out += [(m.step, m.value, m.timestamp) for m in client.get_metric_history(r.info.run_id, "train/loss")]
    return out


def train_workers() -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "RayTrainWorker" in cmd and "IDLE" not in cmd:
            pids.append(p.pid)
    return pids


def wait_for_step(tracking: str, name: str, step: int, job: subprocess.Popen, timeout: float,
                  after_ms: int = 0) -> None:
    """Until the most recently logged step is >= ``step``, counting only entries logged after ``after_ms``
    (so that after a fault the restarted workers must have made progress first)."""
    deadline = time.time() + timeout
    while True:
        h = [x for x in history(tracking, name) if x[2] > after_ms]
        if h and max(h, key=lambda x: (x[2], x[0]))[0] >= step:
            return
        if job.poll() is not None:
            raise RuntimeError(f"job ended (rc {job.returncode}) before step {step}")
        if time.time() > deadline:
            raise TimeoutError(f"step {step} not reached in {timeout} s")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--ckpt-every", type=int, default=2)
    ap.add_argument("--kills", type=int, default=3, help="training worker kills (then one driver kill)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient  # noqa: F401  (fail early when MLflow is missing)
    from ray.cluster_utils import Cluster

    from protclip.data.schema import record_to_row, rows_to_table
    from protclip.data.uniprot import parse_file
    from protclip.paths import uniprot_samples_dat

    rng = random.Random(args.seed)
    fault_steps = sorted(rng.sample(range(2, args.steps - 1), args.kills + 1))
    kill_steps, driver_step = fault_steps[:-1], fault_steps[-1]
    head = {"num_cpus": args.num_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    for attempt in range(3):  # Ray waits a fixed 30 s for the raylet; a loaded machine can miss that
        try:
            cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
            break
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
    events: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="protclip-chaos-"))
    try:
        rows = sorted((record_to_row(r) for r in parse_file(uniprot_samples_dat()).records),
                      key=lambda r: r["accession"])
        (tmp / "protanno").mkdir()
        for i, part in enumerate((rows[:52], rows[52:])):
            pq.write_table(rows_to_table(part), tmp / "protanno" / f"part-{i:05d}.parquet", row_group_size=13)
        tracking = f"sqlite:///{tmp}/mlflow.db"
        data, runs = str(tmp / "protanno"), str(tmp / "runs")

        t0 = time.time()
        ref = start_job(cluster.address, tracking, overrides(data, runs, "reference", args.steps, args.ckpt_every,
                                                             args.kills), tmp / "reference.log")
        if ref.wait(timeout=1800) != 0:
            raise RuntimeError(f"reference run failed: {(tmp / 'reference.log').read_text()[-3000:]}")
        ref_s = time.time() - t0
        reference = {s: v for s, v, _ in history(tracking, "reference")}

        t1 = time.time()
        ov = overrides(data, runs, "chaos", args.steps, args.ckpt_every, args.kills)
        job = start_job(cluster.address, tracking, ov, tmp / "chaos.log")
        last_fault_ms = 0
        for k in kill_steps:
            wait_for_step(tracking, "chaos", k, job, 900, after_ms=last_fault_ms)
            pids = train_workers()
            while not pids:
                time.sleep(0.2)
                pids = train_workers()
            victim = rng.choice(pids)
            last_fault_ms = int(time.time() * 1000)
            os.kill(victim, signal.SIGKILL)
            events.append(f"step {k}: SIGKILL training worker pid {victim} (of {len(pids)})")
        wait_for_step(tracking, "chaos", driver_step, job, 900, after_ms=last_fault_ms)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=60)
        events.append(f"step {driver_step}: SIGKILL the driver; job started again")
        time.sleep(2.0)
        job = start_job(cluster.address, tracking, ov, tmp / "chaos.log")
        rc = job.wait(timeout=1800)
        chaos_s = time.time() - t1
        log_tail = (tmp / "chaos.log").read_text()[-3000:]
        hist = history(tracking, "chaos")
    finally:
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    steps_seen = sorted({s for s, _, _ in hist})
    mismatches = [(s, v, reference.get(s)) for s, v, _ in hist if v != reference.get(s)]
    by_step: dict[int, set[float]] = {}
    for s, v, _ in hist:
        by_step.setdefault(s, set()).add(v)
    twice_different = [s for s, vs in by_step.items() if len(vs) > 1]
    ok = rc == 0 and steps_seen == list(range(1, args.steps + 1)) and not mismatches and not twice_different
    rows = [
        ("run", f"{args.steps} steps, checkpoint every {args.ckpt_every}, 2 FSDP2 workers (gloo), tiny random "
                f"towers, the 103 real sample entries, `data.split deterministic`"),
        ("faults", "; ".join(events)),
        ("completed", f"{'yes' if rc == 0 else f'no (exit {rc})'}"),
        ("steps logged", f"{len(hist)} entries for steps {steps_seen[0] if steps_seen else '-'}.."
                         f"{steps_seen[-1] if steps_seen else '-'} (re-run steps are logged again)"),
        ("values different from the uninterrupted run", str(len(mismatches))),
        ("steps logged twice with different values", str(len(twice_different))),
        ("wall time", f"reference {ref_s:.0f} s; chaos run {chaos_s:.0f} s (all restarts included)"),
        ("result", "PASS" if ok else "FAIL"),
    ]
    from benchmarks.build_scale_benchmark import machine  # same machine block as the build benchmark

    text = ["# Chaos: repeated faults in one pre-training run", "",
            f"`{' '.join(sys.argv)}`, {dt.date.today().isoformat()}", "", "| | |", "|---|---|"]
    text += [f"| {k} | {v} |" for k, v in rows]
    text += ["", "| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in machine().items()]
    if not ok:
        text += ["", "```", log_tail, "```", "", json.dumps(mismatches[:20])]
    path = Path(args.out or REPO / "benchmarks" / "results" / f"chaos_{dt.date.today():%Y%m}.md")
    path.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
