"""Fixtures shared by the fault tests (test_reliability_faults.py, test_two_nodes.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory, uniprot_dat):
    """The ProtAnno folder every fault test trains on (tests/helpers/fault_runs.py)."""
    from tests.helpers.fault_runs import write_fault_protanno

    return write_fault_protanno(tmp_path_factory.mktemp("fault_data") / "data", uniprot_dat)


@pytest.fixture(scope="session")
def fault_reference(tmp_path_factory, fault_data, ray_local) -> dict[int, float]:
    """``{step: train/loss}`` of the uninterrupted run: one ``TorchTrainer.fit`` in this process, local storage."""
    from mlflow.tracking import MlflowClient

    from protclip.config import load_config
    from protclip.recipes.pretrain import PretrainConfig, run_pretrain
    from tests.helpers.fault_runs import STEPS, fault_run_overrides

    tmp = tmp_path_factory.mktemp("fault_reference")
    tracking = f"sqlite:///{tmp}/mlflow.db"
    ov = fault_run_overrides(str(fault_data), str(tmp / "runs"), "reference") | {
        "tracking.uri": tracking, "tracking.experiment": "fault-reference"}
    res = run_pretrain(load_config(PretrainConfig, None, ov))
    hist = sorted((m.step, m.value) for m in MlflowClient(tracking).get_metric_history(res.run_id, "train/loss"))
    assert [s for s, _ in hist] == list(range(1, STEPS + 1))  # each step logged once
    return dict(hist)
