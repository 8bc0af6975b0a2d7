"""Ray Data's read, sampling and counting tasks unpickle functions of these modules in every worker process they
start; importing torch there costs seconds per cold worker on a small machine (the mix pass of a tiny run took
15 s instead of 2), so the data stages must stay free of torch."""

from __future__ import annotations

import subprocess
import sys

from protclip.paths import REPO_ROOT

STAGE_MODULES = [
    "protclip.data.stages",
    "protclip.data.mix",
    "protclip.data.sampling",
    "protclip.data.parquet_files",
    "protclip.seeds",
]


def test_data_stage_modules_do_not_import_torch():
    code = f"import sys; import {', '.join(STAGE_MODULES)}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
