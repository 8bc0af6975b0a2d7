"""`ray job submit` end to end with the real CLI and cluster/runtime_env.yaml against a local head on 127.0.0.1.

The working dir is uploaded by Ray's own packager, so this also proves the excludes on the real repository:
the job sees `protclip/data/` (a bare `data` pattern would have dropped it) and no `.git`.
"""

from __future__ import annotations

import re

import pytest

from protclip.paths import REPO_ROOT
from tests.helpers.ray_cluster import job_server_missing_modules, ray_head

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_missing = job_server_missing_modules()
requires_job_server = pytest.mark.skipif(
    bool(_missing),
    reason=f"`ray job submit` needs the dashboard/job server: install ray[default] (missing: {', '.join(_missing)})",
)

PROBE = ("import os, sys; print('ok', os.path.isdir('.git'), os.path.isdir('.venv'), "
         "os.path.isfile('protclip/data/__init__.py'), os.path.isfile('cluster/runtime_env.yaml'))")


@requires_job_server
def test_ray_job_submit_with_runtime_env():
    with ray_head(num_cpus=4) as head:
        res = head.run_cli("job", "submit", "--address", head.dashboard_url,
                           "--runtime-env", "cluster/runtime_env.yaml",
                           "--", "python", "-c", PROBE, cwd=REPO_ROOT, timeout=600)
        out = res.stdout + res.stderr
        assert res.returncode == 0, f"ray job submit failed ({res.returncode}):\n{out[-4000:]}\n{head.log_tail()}"
        m = re.search(r"Job '(raysubmit_\w+)' succeeded", out)
        assert m, f"no success line in the submit output:\n{out[-4000:]}"
        # the entrypoint ran in the uploaded working dir: code present, .git and .venv excluded
        assert "ok False False True True" in out, out[-4000:]
        status = head.run_cli("job", "status", "--address", head.dashboard_url, m.group(1))
        assert re.search(r"(?i)succeeded", status.stdout + status.stderr), status.stdout + status.stderr
        logs = head.run_cli("job", "logs", "--address", head.dashboard_url, m.group(1))
        assert "ok False False True True" in logs.stdout
    assert head.alive_processes() == [], "Ray processes left after teardown"
