"""Screenshots of every page of the app, taken in the same headless Chromium the browser tests use.

    python -m workbench.dashboards.screenshots [--model organism] [--head 3.0] [--circuit DIR] [--out docs/screenshots]

Traces the model on the sample paragraph in a fresh temporary store, opens the head view of --head by
clicking it on the overview, zero-ablates it, opens the circuit in DIR (a folder with a circuit.json, or the
newest circuit run of --store when given) and compares the app's runs. Writes overview.png, head.png,
intervene.png, circuits.png (when there is a circuit) and runs.png (the paragraph's run beside an IOI
sentence's).
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path

from workbench.dashboards.app import create_app
from workbench.dashboards.browser import (
    choose,
    chromium,
    click,
    click_point,
    graph_data,
    served,
    text,
    wait,
    wait_graph,
)
from workbench.dashboards.circuits import circuit_runs
from workbench.dashboards.layout import head_source

WIDTH = 1400


def _shot(driver, path: Path) -> None:
    """A full-page PNG (beyond the window's height), through the DevTools protocol."""
    time.sleep(0.5)  # let Plotly finish drawing
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                             "clip": clip})
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {path}")


def take(out: Path, model: str, head: tuple[int, int], circuit: Path | None, store: Path | None) -> None:
    """Drive the app page by page and save one screenshot per page into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(model, store or Path(tmp) / "runs.duckdb")
        if circuit is None and store is not None:
            found = circuit_runs(store)
            circuit = Path(found.path[0]) if len(found) else None
        with served(app) as url, chromium(WIDTH, 1000) as driver:
            driver.get(url)
            wait(driver, lambda d: text(d, "status"))
            click(driver, "run")
            wait(driver, lambda d: "traced" in text(d, "status-done"))
            for spec in ("sink_score", "entropy_norm", "retrieval_score", "induction", "prev_token"):
                wait_graph(driver, head_source("overview", spec))
            _shot(driver, out / "overview.png")

            layer, index = head
            click_point(driver, head_source("overview", "sink_score"), index, layer)
            wait(driver, lambda d: f"L{layer}.H{index}" in text(d, "head-info") and graph_data(d, "sequence"))
            received = graph_data(driver, "sequence")[0]["y"]
            query = len(received) * 2 // 3
            click_point(driver, "sequence", query, received[query])  # that query's attention, below the view
            wait_graph(driver, "query-window", lambda data: data and data[0].get("x"))
            _shot(driver, out / "head.png")

            click(driver, "edit-this-head")
            click(driver, "apply")
            wait(driver, lambda d: "after" in text(d, "loss-values"))
            wait_graph(driver, "next-token")
            _shot(driver, out / "intervene.png")

            if circuit is not None:
                click(driver, "tab-circuits")
                field = wait(driver, lambda d: d.find_element("id", "circuit-path"))
                field.send_keys(str(circuit))
                click(driver, "load-circuit")
                wait_graph(driver, head_source("circuits", "circuit"))
                _shot(driver, out / "circuits.png")
            else:
                print("no circuit given (--circuit DIR, or a --store with circuit runs): circuits.png not taken")

            choose(driver, "task", "indirect object")  # a second trace, to compare two runs
            wait(driver, lambda d: "filled in" in text(d, "status"))
            click(driver, "run")
            wait(driver, lambda d: "traced" in text(d, "status-done"))
            click(driver, "tab-runs")
            traces = "[...document.querySelectorAll('#runs-select label')].filter(l => / trace /.test(l.textContent))"
            wait(driver, lambda d: d.execute_script(f"return {traces}.length") >= 2)  # the store's circuit runs aside
            driver.execute_script(f"{traces}.forEach(l => l.querySelector('input').click());")
            wait_graph(driver, "runs-figure", lambda g: len(g) == 2)
            _shot(driver, out / "runs.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--head", default="3.0",
                        help="LAYER.HEAD of the head to open and ablate (default: organism's retrieval head L3.H0)")
    parser.add_argument("--circuit", type=Path, help="a folder holding circuit.json (or the file)")
    parser.add_argument("--store", type=Path, help="a results store to read circuit runs from and write to")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    layer, head = (int(x) for x in args.head.split("."))
    take(args.out, args.model, (layer, head), args.circuit, args.store)


if __name__ == "__main__":
    main()
