#!/usr/bin/env python
"""Screenshots of the MLflow UI for pre-training runs, taken by headless Chromium: what a user sees after the demo.

Starts the lean MLflow server (``protclip.mlflow_server``, bound to 127.0.0.1) on an existing tracking store, then
captures the run overview and the metric charts of the newest run, the experiment's runs table, and the compare
view of the two newest runs of the experiment. Needs Chromium (Debian: ``apt install chromium``) and the UI
extra (``pip install -e '.[ui]'``).

    python scripts/ui_screenshots.py --tracking-uri sqlite:///$PWD/mlflow.db --experiment protclip-demo \\
        --out docs/images

Look at the images: the run page should show the params, the dataset input, the logged model and the
``summary/before_after`` artifact; the charts the ``train/*``, ``val/*``, ``perf/*``, ``eval/*`` and ``system/*``
metrics; the compare view both runs side by side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protclip.mlflow_server import start_server  # noqa: E402

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(f"error: none of {', '.join(CHROMIUM)} is on PATH (Debian: apt install chromium)")


def shoot(browser: str, url: str, out: Path, width: int, height: int, wait_ms: int) -> None:
    """One headless page load (JavaScript given ``wait_ms`` of virtual time to render), saved as PNG."""
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", f"--window-size={width},{height}",
           f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not out.is_file():
        raise SystemExit(f"error: chromium failed on {url} (exit {r.returncode}):\n{r.stderr[-2000:]}")


def pages(url: str, exp_id: str, runs: list[str]) -> dict[str, str]:
    """File name -> UI address (MLflow 3 hash routes)."""
    newest = runs[0]
    out = {
        "mlflow_run_overview.png": f"{url}/#/experiments/{exp_id}/runs/{newest}",
        "mlflow_run_metrics.png": f"{url}/#/experiments/{exp_id}/runs/{newest}/model-metrics",
        "mlflow_experiment_runs.png": f"{url}/#/experiments/{exp_id}/runs",
    }
    if len(runs) > 1:
        q = urllib.parse.urlencode({"runs": json.dumps(runs[:2]), "experiments": json.dumps([exp_id])})
        out["mlflow_compare_runs.png"] = f"{url}/#/compare-runs?{q}"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", required=True, help="the store the runs are in (sqlite:///... )")
    ap.add_argument("--experiment", default="protclip-demo")
    ap.add_argument("--out", default="ui_screenshots", help="folder for the PNG files")
    ap.add_argument("--width", type=int, default=1440)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--wait-ms", type=int, default=20000, help="virtual time for the page's JavaScript")
    args = ap.parse_args(argv)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {args.experiment!r} in {args.tracking_uri}")
    runs = [r.info.run_id for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                                      max_results=2)]
    if not runs:
        raise SystemExit(f"error: experiment {args.experiment!r} has no runs")
    browser = chromium()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="protclip-ui-") as root:
        with start_server(root, backend_store_uri=args.tracking_uri) as server:
            for name, url in pages(server.url, exp.experiment_id, runs).items():
                shoot(browser, url, out / name, args.width, args.height, args.wait_ms)
                print(f"{out / name}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
