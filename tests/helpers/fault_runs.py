"""The one pre-training setup of the fault tests (a killed worker, a killed driver, a lost node).

They all train the same 6-step run (2 FSDP2 workers, checkpoint every 2, deterministic split) on the same
ProtAnno folder, so one uninterrupted reference run (``tests/train/conftest.py``) serves all of them: placement,
resources and storage differ between the tests, the computation does not.

The data is the fuzzed UniProt file of ``test_reliability_input`` (a 100k-residue protein, U/O/B/Z/X residues).
"""

from __future__ import annotations

from pathlib import Path

STEPS, CKPT = 6, 2


def write_fault_protanno(folder: Path, uniprot_dat: Path) -> Path:
    """The fuzzed samples as a ProtAnno folder of two shards (row groups of 16)."""
    import pyarrow.parquet as pq

    from protclip.data.schema import record_to_row, rows_to_table
    from protclip.data.uniprot import parse_file
    from tests.helpers.fuzz import LONG_LEN, make_fuzz

    folder.mkdir(parents=True)
    (folder / "fuzz.dat").write_bytes(make_fuzz(uniprot_dat.read_bytes()).data)
    rows = sorted((record_to_row(r) for r in parse_file(folder / "fuzz.dat").records), key=lambda r: r["accession"])
    assert max(r["length"] for r in rows) == LONG_LEN
    (folder / "protanno").mkdir()
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(rows_to_table(part), folder / "protanno" / f"part-{i:05d}.parquet", row_group_size=16)
    return folder / "protanno"


def fault_run_overrides(data_uri: str, storage_path: str, name: str, endpoint: str | None = None,
                        **train: object) -> dict[str, str]:
    """Dotted overrides of the shared run; ``train`` adds or replaces ``train.*`` keys (resources, failures)."""
    ov = {
        "data.uri": data_uri, "data.sampling.mode": "none", "data.micro_batch_size": "4",
        "data.max_protein_length": "130", "data.max_text_length": "128", "data.max_subtext_length": "64",
        "data.bucket_window": "16", "data.shuffle_buffer": "32", "data.val_fraction": "0.1",
        "data.num_epochs": "1", "data.split": "deterministic", "data.map_num_cpus": "0.5",
        "model.protein_model": "random", "model.text_model": "random", "model.attention": "sdpa",
        "model.projection_dim": "32", "model.proto_num": "16",
        "train.num_workers": "2", "train.accum_steps": "1", "train.lr": "1e-3", "train.warmup_steps": "2",
        "train.max_steps": str(STEPS), "train.ckpt_every": str(CKPT), "train.val_every": "0",
        "train.log_every": "1", "train.keep_checkpoints": "2", "train.max_failures": "1", "train.export": "false",
        "storage.storage_path": storage_path, "storage.name": name,
    }  # fmt: skip
    if endpoint:
        ov["storage.endpoint_url"] = endpoint
    ov.update({f"train.{k}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in train.items()})
    return ov


def as_argv(overrides: dict[str, str]) -> list[str]:
    """``{"a.b": "1"}`` -> ``["--a.b", "1"]`` (a job's command line)."""
    return [a for k, v in overrides.items() for a in (f"--{k}", v)]


def assert_matches_reference(got: list[tuple[int, float]], reference: dict[int, float],
                             replayed: list[int]) -> None:
    """Every step 1..STEPS logged, the ``replayed`` ones twice (before the fault and after the restart), every
    value equal to the uninterrupted run's at its step.

    Same data, RNG and pinned worker threads on any node: the same computation in the same order, so no rounding
    budget applies (and none could bound a trajectory, where a first difference grows with every step)."""
    steps = [s for s, _ in got]
    assert sorted(set(steps)) == list(range(1, STEPS + 1)), got
    assert sorted(s for s in set(steps) if steps.count(s) == 2) == replayed, got
    assert all(steps.count(s) <= 2 for s in steps), got
    for step, value in got:
        assert value == reference[step], (step, value, reference[step])
