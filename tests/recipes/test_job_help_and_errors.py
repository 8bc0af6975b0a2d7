"""Every job answers --help from its config source without Ray or torch, and fails in one line with the
documented exit code (README, "Errors and exit codes") before starting Ray."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys

import pytest

from protclip import cli
from protclip.paths import REPO_ROOT

JOBS = ("pretrain", "finetune_lora", "evaluate", "build_protanno", "embed", "index", "demo", "predict_lora",
        "search")
CONFIGS = REPO_ROOT / "jobs" / "configs"


def _job(name: str, *args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``jobs/<name>.py``; ``search`` is ``python -m protclip search``."""
    cmd = ["-m", "protclip", "search"] if name == "search" else [str(REPO_ROOT / "jobs" / f"{name}.py")]
    return subprocess.run([sys.executable, "-X", "importtime", *cmd, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd or REPO_ROOT, env=env)


def _imported(stderr: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s+(\S+)$", stderr, re.M)}


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("import time:")]


@pytest.mark.parametrize("job", JOBS)
def test_help_lists_keys_defaults_and_comments_without_ray_or_torch(job):
    r = _job(job, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    mods = _imported(r.stderr)
    assert not {"torch", "ray", "transformers", "mlflow"} & mods
    prefix = {"demo": "--pretrain."}.get(job, "--")
    expected = {  # a key, its default and the field's own comment in the dataclass source
        "pretrain": ("--train.lr = 1e-05", "base LR (heads, projections, scales)"),
        "finetune_lora": ("--lora.r = 8", "rank of the update"),
        "evaluate": ("--source.export = None", "export dir: protein/ + text/"),
        "build_protanno": ("--build.rows_per_shard = 25000", "Parquet shard size target"),
        "embed": ("--workers = 1", "actors embedding in parallel"),
        "index": ("--overwrite = False", "replace an existing index"),
        "demo": (f"{prefix}train.max_steps = None", "optimizer steps; None = all data epochs"),
        "predict_lora": ("--batch-size = 16", "sequences per forward pass"),
        "search": ("-k = 10", "hits per query"),
    }[job]
    assert expected[0] in r.stdout and expected[1] in r.stdout, r.stdout[:3000]
    if job == "demo":
        assert "--build.build.inputs = []" in r.stdout


@pytest.mark.parametrize("module,config", [("protclip.finetune.infer", "PredictConfig"),
                                           ("protclip.search.cli", "SearchConfig")])
def test_argparse_tools_take_exactly_the_flags_their_help_lists(module, config):
    """predict and search parse argparse flags; their --help lists the config's fields: the two must match."""
    import dataclasses
    import importlib

    from protclip.help import cli_flag, config_doc

    mod = importlib.import_module(module)
    parser = mod._parser()
    fields = [f.name for f in dataclasses.fields(getattr(mod, config))]
    assert [f.name for f in config_doc(module, config).fields] == fields
    assert {a.dest for a in parser._actions} == set(fields)
    assert {cli_flag(n) for n in fields} == {s for a in parser._actions for s in a.option_strings}
    assert all(a.default is None for a in parser._actions)  # the defaults --help shows are the ones used


def test_predict_with_a_missing_input_file_is_one_line_exit_3(tmp_path):
    r = _job("predict_lora", "--adapter", "ad", "--input", "missing.fasta", "--output", "p.csv", cwd=tmp_path)
    assert r.returncode == cli.EXIT_STORAGE
    assert _errors(r.stderr) == [f"storage error: --input {tmp_path / 'missing.fasta'}: no such file"]
    assert list(tmp_path.iterdir()) == []


def test_predict_with_a_broken_record_is_one_line_naming_file_and_line_exit_1(tmp_path):
    """A FASTA whose second record has a character that is no amino acid: the job failed on its input (exit 1,
    README table), one line naming the file and the record; nothing is written."""
    from protclip.paths import shared_data_dir

    text = (shared_data_dir() / "benchmarks/deeploc1_la/deeploc_test_set.fasta").read_text()
    lines = text.splitlines()
    second = [i for i, line in enumerate(lines) if line.startswith(">")][1]  # header of the second record
    third = [i for i, line in enumerate(lines) if line.startswith(">")][2]
    lines = lines[:third]
    lines[second + 1] = lines[second + 1][:10] + "#" + lines[second + 1][11:]  # break one of its residues
    (tmp_path / "in.fasta").write_text("\n".join(lines) + "\n")
    r = _job("predict_lora", "--adapter", "ad", "--input", "in.fasta", "--output", "p.csv", cwd=tmp_path)
    assert r.returncode == cli.EXIT_FAILED
    errors = _errors(r.stderr)
    assert len(errors) == 1 and errors[0].startswith("input error: ") and "in.fasta" in errors[0]
    assert f"line {second + 1}" in errors[0] and lines[second].split()[0].lstrip(">") in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fasta"]


def test_finetune_without_arguments_fails_fast_in_one_line(tmp_path):
    r = _job("finetune_lora", cwd=tmp_path)
    assert r.returncode == cli.EXIT_CONFIG
    assert _errors(r.stderr) == [_errors(r.stderr)[0]] and _errors(r.stderr)[0].startswith("config error: data.path")
    assert "ray" not in _imported(r.stderr)  # the config is checked before Ray starts (it took 35 s to fail)


def test_evaluate_bad_export_folder_exits_with_the_documented_codes(tmp_path, monkeypatch, capsys):
    from protclip.recipes import evaluate

    monkeypatch.chdir(tmp_path)
    base = ["--config", str(CONFIGS / "evaluate.yaml"), "--tracking.uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]

    def run(*extra: str) -> tuple[int, list[str]]:
        rc = cli.run_main(evaluate.main, [*base, *extra])
        return rc, capsys.readouterr().err.strip().splitlines()

    rc, err = run("--source.export", "no_such_export")
    assert rc == cli.EXIT_STORAGE and len(err) == 1 and str(tmp_path / "no_such_export") in err[0]
    (tmp_path / "not_an_export").mkdir()
    rc, err = run("--source.export", "not_an_export")
    assert rc == cli.EXIT_CONFIG and len(err) == 1 and "not a ProtCLIP export folder" in err[0]
    rc, err = run("--source.mlflow_run_id", "0123456789abcdef")
    assert rc == cli.EXIT_TRACKING
    assert err[-1].startswith("tracking error: source.mlflow_run_id: MLflow run '0123456789abcdef' does not exist")


RUN_ID = "0123456789abcdef"
UNKNOWN_RUN = {"evaluate": ("source.mlflow_run_id", "--config", str(CONFIGS / "evaluate.yaml"),
                            "--source.mlflow_run_id", RUN_ID),
               "finetune_lora": ("base.source", "--config", str(CONFIGS / "deeploc_lora.yaml"),
                                 "--base.source", f"mlflow:{RUN_ID}")}


@pytest.mark.parametrize("job,store", [("evaluate", "default"), ("finetune_lora", "default"),
                                       ("evaluate", "existing")])
def test_an_unknown_mlflow_run_is_one_line_and_leaves_the_working_directory_as_it_was(job, store, tmp_path):
    """The shipped configs from an empty working directory: no mlflow.db, no runs/ folder, no MLflow set-up
    log lines; with a store that exists (elsewhere) but lacks the run, the same one line."""
    from mlflow.tracking import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PROTCLIP_LOG_DIR"] = str(tmp_path / "logs")
    key, *args = UNKNOWN_RUN[job]
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    if store == "existing":
        uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
        (tmp_path / "store").mkdir()
        MlflowClient(uri).search_experiments()  # creates the store and its tables
        args += ["--tracking.uri", uri]
    r = _job(job, *args, cwd=cwd, env=env)
    assert r.returncode == cli.EXIT_TRACKING, r.stderr[-2000:]
    (line,) = _errors(r.stderr)
    assert line.startswith(f"tracking error: {key}: MLflow run '{RUN_ID}' does not exist in {uri}"), line
    assert list(cwd.iterdir()) == []


def test_a_bad_cli_value_is_reported_as_a_command_line_value(tmp_path):
    r = _job("pretrain", "--config", str(CONFIGS / "tiny.yaml"), "--train.lr", "fast", cwd=tmp_path)
    assert r.returncode == cli.EXIT_CONFIG
    assert _errors(r.stderr) == ["config error: command line --train.lr: train.lr: expected a number, got 'fast'"]


def test_predict_with_a_missing_adapter_is_one_line(tmp_path, monkeypatch, capsys):
    from protclip.finetune.infer import main as predict

    monkeypatch.setenv("PROTCLIP_LOG_DIR", str(tmp_path / "logs"))
    fasta = tmp_path / "s.fasta"
    fasta.write_text(">a\nMKV\n")
    rc = cli.run_main(predict, ["--adapter", str(tmp_path / "none"), "--input", str(fasta), "--output",
                                str(tmp_path / "p.csv")], help_passthrough=True)
    assert rc == cli.EXIT_FAILED
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "protclip_task.json" in line
    (log,) = (tmp_path / "logs").iterdir()
    assert "Traceback" in log.read_text() and str(log) in line


# ------------------------------------------------------------------- in-process: error classes -> exit codes


def _wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def _fails_with(exc: BaseException):
    def main(argv: list[str]) -> int:
        raise exc
    return main


def test_expected_failures_map_to_one_line_and_their_exit_code(tmp_path, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    from protclip.data.parquet_files import ProtAnnoFileError
    from protclip.preflight import TrackingError

    monkeypatch.setenv("PROTCLIP_LOG_DIR", str(tmp_path))
    try:
        sqlite3.connect(":memory:").execute("select * from missing_table")
    except sqlite3.OperationalError as e:
        sql_error = e
    cases = [(ProtAnnoFileError("shard part-0.parquet row group 3 column sequence: not UTF-8"), cli.EXIT_FAILED,
              "data error: shard part-0.parquet"),
             (MlflowException("Run 'abc' not found"), cli.EXIT_TRACKING, "tracking error: Run 'abc' not found"),
             (sql_error, cli.EXIT_TRACKING, "tracking error: no such table: missing_table"),
             (TrackingError("tracking store read-only"), cli.EXIT_TRACKING, "tracking error: tracking store"),
             (_wrapped(RuntimeError("wrapped"), ProtAnnoFileError("bad shard")), cli.EXIT_FAILED,
              "data error: bad shard")]
    for exc, code, start in cases:
        assert cli.run_main(_fails_with(exc), []) == code
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(start), line
    with pytest.raises(KeyError):  # a bug keeps its traceback
        cli.run_main(_fails_with(KeyError("x")), [])


def test_a_ray_start_failure_is_one_line_exit_6(monkeypatch, capsys):
    import ray

    from protclip import runtime

    def init(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because ...\nmore")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.run_main(lambda argv: runtime.init_ray(num_cpus=1), []) == cli.EXIT_RAY
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ray error: could not start a local Ray instance on 127.0.0.1: Exception: The current "
                           "node timed out during startup")


def test_read_only_tracking_and_storage_say_so(tmp_path, monkeypatch):
    import os

    from protclip import storage
    from protclip.preflight import TrackingError, check_tracking
    from protclip.tracking import TrackingConfig

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(ro)) else real(p, mode))
    with pytest.raises(TrackingError, match=rf"{ro}.*read-only"):
        check_tracking(TrackingConfig(uri=f"sqlite:///{ro / 'mlflow.db'}"))
    assert check_tracking(TrackingConfig(uri=f"sqlite:///{tmp_path / 'ok' / 'mlflow.db'}"))

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "makedirs", denied)
    with pytest.raises(storage.StorageError) as e:
        storage.check_access(str(ro / "runs"), write=True)
    assert "not writable" in str(e.value) and "credentials" not in str(e.value)
