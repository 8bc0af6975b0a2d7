"""The layering rule of CONTRIBUTING.md, checked on the real package: no folder-level import cycle, imports run
one way (base <- data <- model <- train <- pretrained <- eval/finetune <- recipes), and the checker itself catches a
cycle when one is planted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def _checker():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_has_no_folder_cycle_and_imports_run_one_way(capsys):
    assert _checker().main() == 0, capsys.readouterr().out


def test_checker_reports_a_planted_cycle():
    checker = _checker()
    edges = {"data": {"base", "model"}, "model": {"data"}, "train": {"model"}}
    assert checker.cycles(edges) == [("data", "model")]
    assert checker.cycles({"model": {"data"}, "train": {"model"}}) == []
