"""Run tutorials top to bottom in place, keeping their outputs, without widget state.

    .venv/bin/python tutorials/execute.py                 # every tutorial, one at a time
    .venv/bin/python tutorials/execute.py 02_radix_attention.ipynb

Saved outputs keep each view's static HTML/SVG (what GitHub and nbval show) and drop the
widget models (`application/vnd.jupyter.widget-view+json` outputs and the notebook's widget
state), which only a live kernel can draw and which would bloat the files. Kernels run with
`LMNB_DTYPE=float32`: the dtype nbval checks the recorded outputs in (see conftest.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

HERE = Path(__file__).parent
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def strip_widgets(nb: nbformat.NotebookNode) -> None:
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
                if "text/html" in data:  # the frozen picture stands in for the widget
                    data.pop("text/plain", None)


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    ExecutePreprocessor(timeout=900, kernel_name="python3", store_widget_state=False).preprocess(
        nb, {"metadata": {"path": str(path.parent)}}
    )
    seconds = time.perf_counter() - started
    strip_widgets(nb)
    nbformat.write(nb, path)
    return seconds


def main(names: list[str]) -> None:
    os.environ["LMNB_DTYPE"] = "float32"  # kernels inherit it
    paths = [HERE / n for n in names] or sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
