"""Notebooks and tutorials under nbval: their checked outputs (`# NBVAL_CHECK_OUTPUT` cells) are
the default model's greedy answers and scores recorded in float32, so each notebook's kernel
starts with `LMNB_DTYPE=float32`, whatever the test run's own `LMNB_DTYPE` is (tests/ follow it).
"""

from __future__ import annotations

import os

import pytest

NOTEBOOK_DTYPE = "float32"  # the dtype tutorials/execute.py records outputs in


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    """nbval starts a notebook's kernel while setting up its first cell: pin the dtype then."""
    if getattr(item, "path", None) is None or item.path.suffix != ".ipynb":
        yield
        return
    before = os.environ.get("LMNB_DTYPE")
    os.environ["LMNB_DTYPE"] = NOTEBOOK_DTYPE
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LMNB_DTYPE", None)
        else:
            os.environ["LMNB_DTYPE"] = before
