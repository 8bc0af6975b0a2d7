"""Before/after tables: the same logged metrics at step 0 (untrained model) and at the last evaluated step.

Why a table read back from MLflow instead of numbers kept in memory: what the console prints and what the run
records are then the same numbers by construction, and any finished run can be summarised again later
(``jobs/demo.py`` prints it; :func:`fetch_history` works on any run id).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "DEMO_ROWS", "History", "fetch_history", "before_after", "format_table"]

#: metric key -> {step: value}
History = dict[str, dict[int, float]]


@dataclass(frozen=True)
class Row:
    """One table line: a logged metric and what to read it against (a chance or majority-class level)."""

    label: str
    key: str  # MLflow metric key
    reference_key: str | None = None  # metric holding the reference level (logged by the same suite)
    reference_label: str = "chance"
    lower_is_better: bool = False


def _retrieval(name: str) -> list[Row]:
    p = f"eval/{name}/"
    rows = []
    for direction, label in (("p2t", "protein->text"), ("t2p", "text->protein")):
        for m, mlabel in (("r1", "R@1"), ("r10", "R@10"), ("mrr", "MRR")):
            rows.append(Row(f"{label} {mlabel}", f"{p}{direction}_{m}", f"{p}chance_{m}"))
    rows.append(Row("GC loss (test pairs)", f"{p}gc_loss", f"{p}gc_loss_chance", lower_is_better=True))
    return rows


#: the demo's table: retrieval and GC loss on the test clusters, validation GC loss on the val clusters,
#: zero-shot subcellular location on the test clusters, the DeepLoc linear probe of the protein tower
DEMO_ROWS: tuple[Row, ...] = (
    *_retrieval("retrieval_test"),
    Row("val/loss_gc (val clusters)", "val/loss_gc", None, lower_is_better=True),
    Row("zero-shot location acc", "eval/location_zeroshot/acc", "eval/location_zeroshot/majority_acc",
        "majority"),
    Row("zero-shot location F1 (macro)", "eval/location_zeroshot/f1_macro", None),
    Row("DeepLoc linear probe acc", "eval/deeploc_probe/acc", "eval/deeploc_probe/majority_acc", "majority"),
)


def fetch_history(client: Any, run_id: str, keys: Iterable[str]) -> History:
    """``{key: {step: value}}`` of ``run_id`` through an ``MlflowClient``; keys never logged are left out.
    A key logged twice at one step keeps the later value (a re-run evaluation replaces the earlier one)."""
    out: History = {}
    for key in dict.fromkeys(keys):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        if hist:
            out[key] = {int(m.step): float(m.value) for m in hist}
    return out


def _at(history: Mapping[str, Mapping[int, float]], key: str | None, step: int | None) -> float:
    if key is None or step is None or key not in history or step not in history[key]:
        return math.nan
    return history[key][step]


def before_after(history: Mapping[str, Mapping[int, float]], rows: Iterable[Row] = DEMO_ROWS,
                 before_step: int = 0) -> list[dict[str, Any]]:
    """One dict per row whose metric was logged: label, key, reference, before (``before_step``), after (the
    metric's last logged step) and that step. The reference is taken at the after step (it only depends on
    the evaluated set, which both steps share)."""
    out = []
    for row in rows:
        steps = sorted(history.get(row.key, {}))
        if not steps:
            continue
        after_step = steps[-1]
        ref_step = after_step if row.reference_key in history and after_step in history[row.reference_key] \
            else before_step
        out.append({
            "label": row.label, "key": row.key, "reference_label": row.reference_label,
            "reference": _at(history, row.reference_key, ref_step),
            "before": _at(history, row.key, before_step), "after": _at(history, row.key, after_step),
            "before_step": before_step, "after_step": after_step, "lower_is_better": row.lower_is_better,
        })  # fmt: skip
    return out


def _fmt(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.3f}"


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table (readable as plain text in a console) of :func:`before_after`'s rows."""
    if not results:
        return "(no evaluation metrics were logged)"
    after_steps = sorted({r["after_step"] for r in results})
    head = f"| metric | reference | before (step {results[0]['before_step']}) | after (step " \
           f"{'/'.join(map(str, after_steps))}) | after / reference |"
    lines = [head, "|---|---|---|---|---|"]
    for r in results:
        ref = r["reference"]
        ratio = "—"
        if not r["lower_is_better"] and not math.isnan(ref) and ref > 0 and not math.isnan(r["after"]):
            ratio = f"{r['after'] / ref:.2f}x"
        ref_txt = "—" if math.isnan(ref) else f"{_fmt(ref)} ({r['reference_label']})"
        lines.append(f"| {r['label']} | {ref_txt} | {_fmt(r['before'])} | {_fmt(r['after'])} | {ratio} |")
    return "\n".join(lines)
