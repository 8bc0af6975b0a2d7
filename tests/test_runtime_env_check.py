"""The pre-submit size check packs the working dir exactly as Ray would and fails clearly above the limit."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from protclip import cluster_tools
from protclip.cluster_tools import (
    RuntimeEnvError,
    RuntimeEnvTooLargeError,
    check_runtime_env,
    effective_excludes,
    iter_packed_paths,
    load_runtime_env,
    pack_working_dir,
)
from protclip.paths import REPO_ROOT

RUNTIME_ENV = REPO_ROOT / "cluster" / "runtime_env.yaml"
MIB = 1024 * 1024


def _sparse(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk space (never read when excluded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def _tree(root: Path) -> Path:
    """A small repo-like working dir."""
    for rel, text in {
        "protclip/__init__.py": "",
        "protclip/data/__init__.py": "# the package, not a data folder\n",
        "protclip/data/sampling.py": "x = 1\n",
        "jobs/pretrain.py": "print('hi')\n",
        "jobs/configs/paper.yaml": "train: {}\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".git/objects/ab/cdef": "blob",
        ".venv/lib/site.py": "",
        "protclip/__pycache__/x.cpython-311.pyc": "",
    }.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_real_repo_packs_small_and_clean(tmp_path):
    out = tmp_path / "pkg.zip"
    (rep,) = check_runtime_env(RUNTIME_ENV, working_dir=REPO_ROOT, keep_zip=out)
    assert out.is_file() and rep.zip_bytes == out.stat().st_size
    assert rep.zip_bytes < 5 * MIB, rep.summary()
    names = zipfile.ZipFile(out).namelist()
    parts = {part for n in names for part in Path(n).parts}
    assert not parts & {".git", ".venv", "__pycache__", "shared", "mlruns"}, sorted(parts)
    assert "protclip/__init__.py" in names
    # anchored excludes: the package protclip/data/ travels even though /data is excluded
    assert "protclip/data/__init__.py" in names
    assert "cluster/runtime_env.yaml" in names
    assert not [n for n in names if n.endswith((".pyc", ".parquet", ".safetensors"))]


def test_runtime_env_file_fields():
    env = load_runtime_env(RUNTIME_ENV)
    assert env["working_dir"] == "."
    excl = env["excludes"]
    for pattern in (".git", "/.venv", "/data", "/checkpoints"):
        assert pattern in excl
    # a bare "data"/"checkpoints" would also match protclip/data (gitignore semantics)
    assert "data" not in excl and "checkpoints" not in excl
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_big_file_under_excluded_dirs_is_not_packed(tmp_path):
    wd = _tree(tmp_path / "wd")
    for rel in ("data/uniprot_trembl.dat.gz", "checkpoints/step_100/__0_0.distcp", ".venv/lib/libtorch.so",
                ".git/objects/pack/big.pack", "runs/r1/ckpt.bin"):
        _sparse(wd / rel, 150 * MIB)
    out = tmp_path / "pkg.zip"
    (rep,) = check_runtime_env(RUNTIME_ENV, working_dir=wd, keep_zip=out)
    names = set(zipfile.ZipFile(out).namelist())
    assert names == {"protclip/__init__.py", "protclip/data/__init__.py", "protclip/data/sampling.py",
                     "jobs/pretrain.py", "jobs/configs/paper.yaml"}
    assert rep.zip_bytes < MIB


def test_big_file_in_included_dir_fails_with_offenders(tmp_path, capsys):
    wd = _tree(tmp_path / "wd")
    _sparse(wd / "protclip" / "weights" / "esm2_650m.bin", 120 * MIB)
    _sparse(wd / "notebooks" / "scratch.npy", 30 * MIB)
    with pytest.raises(RuntimeEnvTooLargeError) as ei:
        check_runtime_env(RUNTIME_ENV, working_dir=wd, max_mib=100)
    msg = str(ei.value)
    assert "too large for `ray job submit`" in msg and "> 100.00 MiB" in msg
    assert "protclip/weights/esm2_650m.bin" in msg and "notebooks/" in msg
    assert msg.index("esm2_650m.bin") < msg.index("scratch.npy")  # largest first
    assert "excludes" in msg and ".rayignore" in msg
    assert ei.value.report.zip_bytes == 0  # not written: the estimate was already over the limit
    # the CLI: exit code 1, the same message on stderr
    rc = cluster_tools.main(["check-runtime-env", "--runtime-env", str(RUNTIME_ENV), "--working-dir", str(wd)])
    err = capsys.readouterr().err
    assert rc == 1 and "esm2_650m.bin" in err
    # under a higher limit it passes, and the large file is reported as a warning
    rc = cluster_tools.main(["check-runtime-env", "--runtime-env", str(RUNTIME_ENV), "--working-dir", str(wd),
                             "--max-mib", "200"])
    captured = capsys.readouterr()
    assert rc == 0 and "ok:" in captured.out and "esm2_650m.bin" in captured.err


def test_matches_ray_packager(tmp_path):
    """Same files as Ray's own create_package, with nested .gitignore/.rayignore, anchors and empty dirs."""
    from ray._private.runtime_env.packaging import create_package

    wd = _tree(tmp_path / "wd")
    # the repository's own .gitignore plus a few rules of our own
    (wd / ".gitignore").write_text((REPO_ROOT / ".gitignore").read_text() + "\n*.log\n/outputs/\n")
    (wd / "protclip" / ".gitignore").write_text("local_*.py\n")
    (wd / "jobs" / ".rayignore").write_text("configs/secret.yaml\n")
    for rel in ("a.log", "outputs/x.txt", "protclip/local_notes.py", "protclip/keep.py", "jobs/configs/secret.yaml",
                "protclip/sub/outputs/kept.txt", "data/raw.dat", "docs/data/figure.txt", "mlflow.db",
                "mlflow.db-journal", "mlruns/0/meta.yaml", "protclip.egg-info/PKG-INFO"):
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text("x")
    (wd / "empty_dir").mkdir()
    excludes = effective_excludes(load_runtime_env(RUNTIME_ENV))
    ours = tmp_path / "ours.zip"
    pack_working_dir(wd, excludes, out_zip=ours)
    theirs = tmp_path / "ray.zip"
    create_package(str(wd), theirs, include_gitignore=True, excludes=list(excludes))
    ours_names = sorted(zipfile.ZipFile(ours).namelist())
    assert ours_names == sorted(zipfile.ZipFile(theirs).namelist())
    assert "protclip/keep.py" in ours_names and "protclip/sub/outputs/kept.txt" in ours_names
    assert "docs/data/figure.txt" in ours_names and "empty_dir/" in ours_names
    for dropped in ("a.log", "outputs/x.txt", "protclip/local_notes.py", "jobs/configs/secret.yaml", "data/raw.dat",
                    "mlflow.db", "mlflow.db-journal", "mlruns/0/meta.yaml", "protclip.egg-info/PKG-INFO"):
        assert dropped not in ours_names


def test_gitignore_can_be_disabled_like_ray(tmp_path, monkeypatch):
    wd = _tree(tmp_path / "wd")
    (wd / ".gitignore").write_text("jobs/\n")
    assert not any(p.name == "pretrain.py" for p in iter_packed_paths(wd, []))
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")
    assert any(p.name == "pretrain.py" for p in iter_packed_paths(wd, []))


def test_remote_working_dir_needs_no_check(tmp_path):
    f = tmp_path / "re.yaml"
    f.write_text("working_dir: s3://bucket/code/protclip.zip\n")
    assert check_runtime_env(f) == []


@pytest.mark.parametrize("text, fragment", [
    ("working_dir: [1, 2\n", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("working_dir: .\nexcludes: .git\n", "'excludes' must be a list"),
    ("working_dir: .\nenv_vars: {A: 1}\n", "quote numbers"),
])
def test_bad_runtime_env_files(tmp_path, text, fragment):
    f = tmp_path / "re.yaml"
    f.write_text(text)
    with pytest.raises(RuntimeEnvError, match=fragment) as ei:
        load_runtime_env(f)
    assert str(f) in str(ei.value)


def test_missing_working_dir_is_a_clear_error(tmp_path):
    f = tmp_path / "re.yaml"
    f.write_text(f"working_dir: {tmp_path / 'nope'}\n")
    with pytest.raises(RuntimeEnvError, match="is not a directory"):
        check_runtime_env(f)
