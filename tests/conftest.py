"""Shared pytest fixtures: one local Ray instance per session, a moto S3 server, real sample data paths.

Every server binds 127.0.0.1 and is stopped at the end; nothing reaches another address.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

# Must happen before anything imports ray: make a local Ray instance bind to loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pytest  # noqa: E402

from protclip.paths import shared_data_dir  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def uniprot_dat(shared_data: Path) -> Path:
    return shared_data / "uniprot_samples" / "uniprot_samples.dat"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (each ray.init costs seconds; share it)."""
    import ray

    from protclip.runtime import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


SHIPPED_RUN_ARGS = ["--train.max_steps", "4", "--train.ckpt_every", "2", "--train.val_every", "2",
                    "--train.log_every", "1", "--train.warmup_steps", "1", "--data.num_epochs", "1",
                    "--tracking.system_metrics_interval_s", "1", "--eval.every_steps", "0"]


@pytest.fixture(scope="session")
def shipped_tiny_run(tmp_path_factory, ray_local):
    """The shipped configs run the way a user runs them, from another working directory: the ProtAnno build of
    ``build_samples.yaml`` (relative ``outputs/``), then 4 steps of ``tiny.yaml`` (relative ``runs/``, MLflow in
    ``./mlflow.db``). One run for the relative-paths test and the MLflow run-page test.

    Returns the folder it ran in, the job's printed summary and the pre-training argv (relative to that folder).
    """
    import contextlib
    import io
    import json

    from protclip.paths import REPO_ROOT
    from protclip.recipes import build_protanno, pretrain

    configs = REPO_ROOT / "jobs" / "configs"
    tmp = tmp_path_factory.mktemp("shipped")
    argv = ["--config", str(configs / "tiny.yaml"), *SHIPPED_RUN_ARGS]
    old, out = os.getcwd(), io.StringIO()
    os.chdir(tmp)
    try:
        assert build_protanno.main(["--config", str(configs / "build_samples.yaml"),
                                    "--build.holdout.mode", "hash"]) == 0
        with contextlib.redirect_stdout(out):
            assert pretrain.main(argv) == 0
    finally:
        os.chdir(old)
    text = out.getvalue()
    start = text.rfind("\n{")
    return {"tmp": tmp, "summary": json.loads(text[start + 1 if start >= 0 else 0:]), "argv": argv,
            "tracking_uri": f"sqlite:///{tmp}/mlflow.db"}


# The moto endpoint and test credentials are fixed before any test starts Ray, so Ray workers inherit them
# (variables set after ray.init never reach already-started workers). Only 127.0.0.1 is ever used.
_MOTO_PORT = free_port()
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_MOTO_PORT}"}
for _k, _v in S3_TEST_ENV.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (endpoint and test credentials already in the environment)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_MOTO_PORT, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(S3_TEST_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(autouse=True)
def _no_process_wide_mlflow_store():
    """Fail the test that pins MLflow's store for the whole process (``mlflow.set_tracking_uri``): later tests
    would then read and write that test's database instead of their own ``MLFLOW_TRACKING_URI``."""
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    pinned = getattr(utils, "_tracking_uri", None) if utils is not None else None
    if pinned is not None:
        utils.set_tracking_uri(None)  # undo it so that only this test fails
        pytest.fail(f"this test pinned the process-wide MLflow store ({pinned}); pass the URI to a client instead")
