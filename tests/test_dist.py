"""protclip.dist: rank lookup, flag agreement, reductions and RNG capture, on one process and on 2 gloo ranks."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from protclip.dist import (
    all_ranks,
    any_rank,
    gather_objects,
    mean_over_ranks,
    rng_state,
    set_rng_state,
    sum_over_ranks,
    world,
)
from tests.helpers.train import run_gloo

CPU = torch.device("cpu")


def test_single_process_falls_back_to_local_values():
    assert world() == (0, 1)
    for flag in (True, False):
        assert all_ranks(flag, CPU) is flag
        assert any_rank(flag, CPU) is flag
    values = {"loss": 2.5, "rows": 3}
    assert mean_over_ranks(values, CPU) == {"loss": 2.5, "rows": 3.0}
    assert sum_over_ranks(values, CPU) == {"loss": 2.5, "rows": 3.0}
    assert mean_over_ranks({}, CPU) == {}
    assert gather_objects(("x", 1)) == [("x", 1)]


def _collectives(rank: int, n: int) -> dict:
    return {
        "world": list(world()),
        "all_disagree": all_ranks(rank == 0, CPU),
        "all_agree": all_ranks(True, CPU),
        "all_none": all_ranks(False, CPU),
        "any_disagree": any_rank(rank == 1, CPU),
        "any_none": any_rank(False, CPU),
        "any_all": any_rank(True, CPU),
        "mean": mean_over_ranks({"a": float(rank + 1), "b": 10.0 * rank, "c": 0.1}, CPU),
        "sum": sum_over_ranks({"rows": float(4 + rank), "loss": 0.5}, CPU),
        "gathered": gather_objects(f"rank{rank}"),
    }


def test_two_ranks_agree_on_flags_and_reduce_values():
    results = run_gloo(_collectives, 2)
    for rank, r in enumerate(results):
        assert r["world"] == [rank, 2]
        assert r["all_disagree"] is False and r["all_agree"] is True and r["all_none"] is False
        assert r["any_disagree"] is True and r["any_none"] is False and r["any_all"] is True
        assert r["mean"] == pytest.approx({"a": 1.5, "b": 5.0, "c": 0.1})
        assert r["sum"] == {"rows": 9.0, "loss": 1.0}
        assert r["gathered"] == ["rank0", "rank1"]
    assert results[0]["mean"] == results[1]["mean"]  # identical on every rank


def _draws() -> tuple[float, list[float], list[float]]:
    return random.random(), np.random.rand(4).tolist(), torch.rand(4).tolist()


def test_rng_state_round_trip_reproduces_draws():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    st = rng_state()
    first = _draws()
    buf = io.BytesIO()  # as a checkpoint stores it: torch.save, then a weights_only load
    torch.save(st, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    _draws()  # move every stream on
    set_rng_state(restored)
    assert _draws() == first


def _rng_per_rank(rank: int, n: int) -> list:
    torch.manual_seed(100 + rank)
    random.seed(100 + rank)
    np.random.seed(100 + rank)
    st = rng_state()
    first = _draws()
    set_rng_state(st)
    return [list(first), list(_draws())]


def test_rng_state_round_trip_on_two_ranks_keeps_streams_apart():
    results = run_gloo(_rng_per_rank, 2)
    for first, again in results:
        assert first == again
    assert results[0][0] != results[1][0]
