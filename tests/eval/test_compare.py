"""The before/after table reads its numbers back from the MLflow run, so what is printed is what was logged."""

from __future__ import annotations

import math

import pytest

from protclip.eval.compare import DEMO_ROWS, before_after, fetch_history, format_table
from protclip.tracking import mlflow_client


@pytest.fixture()
def run(tmp_path):
    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    return client, client.create_run(exp).info.run_id


def test_table_numbers_are_the_logged_ones(run):
    client, run_id = run
    logged = {}
    for i, row in enumerate(DEMO_ROWS):
        for step, value in ((0, 0.1 + i / 100), (60, 0.5 + i / 100)):
            client.log_metric(run_id, row.key, value, step=step)
            logged[(row.key, step)] = value
        if row.reference_key:
            client.log_metric(run_id, row.reference_key, 0.01 * (i + 1), step=0)
            client.log_metric(run_id, row.reference_key, 0.02 * (i + 1), step=60)
            logged[(row.reference_key, 60)] = 0.02 * (i + 1)
    client.log_metric(run_id, "eval/retrieval_test/p2t_r1", 0.77, step=60)  # a re-run round: the later value wins
    logged[("eval/retrieval_test/p2t_r1", 60)] = 0.77

    keys = [r.key for r in DEMO_ROWS] + [r.reference_key for r in DEMO_ROWS if r.reference_key]
    rows = before_after(fetch_history(client, run_id, keys))
    assert [r["key"] for r in rows] == [r.key for r in DEMO_ROWS]
    for r, spec in zip(rows, DEMO_ROWS, strict=True):
        assert r["before"] == logged[(spec.key, 0)] and r["after"] == logged[(spec.key, 60)]
        assert r["after_step"] == 60
        if spec.reference_key:
            assert r["reference"] == logged[(spec.reference_key, 60)]
        else:
            assert math.isnan(r["reference"])
    table = format_table(rows)
    chance = logged[("eval/retrieval_test/chance_r1", 60)]  # shared by both directions' R@1 rows
    assert f"| protein->text R@1 | {chance:.3f} (chance) | 0.100 | 0.770 | {0.77 / chance:.2f}x |" in table
    assert table.count("\n") == len(DEMO_ROWS) + 1


def test_missing_metrics_are_left_out_not_invented(run):
    client, run_id = run
    client.log_metric(run_id, "val/loss_gc", 2.5, step=0)
    client.log_metric(run_id, "val/loss_gc", 2.0, step=30)
    rows = before_after(fetch_history(client, run_id, [r.key for r in DEMO_ROWS]))
    assert [(r["label"], r["before"], r["after"]) for r in rows] == [("val/loss_gc (val clusters)", 2.5, 2.0)]
    assert format_table([]) == "(no evaluation metrics were logged)"
