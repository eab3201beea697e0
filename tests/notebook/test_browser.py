"""A real browser: JupyterLab 4 and Notebook 7 from this venv, a notebook with a forking
`%%lmprogram` cell, Debian's chromium driven by Playwright; in each front end the live radix
tree view renders and its node count (the `data-num-nodes` attribute its JS sets) grows while
the program runs.

The server listens on 127.0.0.1 on a free port with a random token, in a fresh temporary root
and Jupyter config/runtime folders; it is always shut down, with its kernels. A screenshot is
saved under `test-artifacts/browser/<front end>/` (the test prints the path: `page.png` the
page, `dashboard.png` the program's cell); with `LMNB_UPDATE_DOCS=1` JupyterLab's is also copied
to `docs/dashboard.png` for the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Debian's chromium on PATH (LMNB_CHROMIUM names another binary)
CHROMIUM = os.environ.get("LMNB_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

PROGRAM = """%%lmprogram --out st --temperature 0
s += system("You are a helpful assistant.")
s += user("Name four different fruits, one per answer.")
forks = s.fork(4)
for i, f in enumerate(forks):
    f += assistant(f"Fruit number {i + 1} is" + gen("fruit", max_tokens=24, stop="\\n"))
forks.join()
s += user("Which one is the sweetest?")
s += assistant(gen("sweetest", max_tokens=48))
s += user("And which one is the most sour?")
s += assistant(gen("sourest", max_tokens=48))
s += user("Name a dessert made with it.")
s += assistant(gen("dessert", max_tokens=48))
"""  # several turns, so that a fast runtime still shows the tree growing in steps

pytestmark = pytest.mark.slow


def _need_browser() -> None:
    if not CHROMIUM or not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium on PATH ({CHROMIUM or 'not found'}; apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


# how each front end is started, and where it opens a notebook
FRONT_ENDS = {
    "jupyterlab": (["jupyter-lab", "--LabApp.news_url=",
                    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                   "/lab/tree/{}"),
    "notebook7": (["jupyter-notebook"], "/notebooks/{}"),
}


def _executable(front_end: str) -> str:
    name = FRONT_ENDS[front_end][0][0]
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed in this venv (pip install -e '.[notebook]')")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _notebook(path: Path) -> None:
    cells = [("code", "%load_ext lmnb"), ("code", PROGRAM)]
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "cells": [{"cell_type": kind, "id": f"c{i}", "metadata": {}, "source": src,
                     "outputs": [], "execution_count": None}
                    for i, (kind, src) in enumerate(cells)]}
    path.write_text(json.dumps(nb))


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Jupyter server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the Jupyter server did not answer at {url}")


def _stop(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut the kernels down over the API, then the server, then anything left of its tree."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(req, timeout=5).close()
        proc.wait(timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        _kill_group(proc)
    for child in family:  # kernels run in sessions of their own
        if child.is_running():
            child.kill()


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(params=sorted(FRONT_ENDS))
def lab(request, tmp_path):
    _need_browser()
    front_end = request.param
    executable = _executable(front_end)
    port, token = _free_port(), secrets.token_hex(16)
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "PYTHONPATH": str(ROOT)}
    cmd = [executable, *FRONT_ENDS[front_end][0][1:], "--no-browser", "--allow-root",
           "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0"]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/api/status?token={token}", proc)
        yield front_end, base, token, root
    finally:
        _stop(proc, base, token)
        log.close()


def _wait_kernel_idle(base: str, token: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5) as resp:
            kernels = json.load(resp)
        if kernels and all(k["execution_state"] == "idle" for k in kernels):
            return
        time.sleep(0.5)
    raise TimeoutError("the notebook's kernel did not start")


def _run_all(page) -> None:
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def test_the_tree_view_renders_and_grows_in_a_real_browser(lab) -> None:
    from playwright.sync_api import sync_playwright

    front_end, base, token, root = lab
    _notebook(root / "live.ipynb")
    artifacts = ARTIFACTS / front_end
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "dashboard.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(120_000)
            page.goto(base + FRONT_ENDS[front_end][1].format("live.ipynb") + f"?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="visible")
            _wait_kernel_idle(base, token)
            _run_all(page)
            tree = page.locator(".lmnb-view[data-lmnb-live][data-num-nodes]").first
            tree.wait_for(state="attached", timeout=180_000)
            seen = _watch_node_counts(page)
            page.locator(".lmnb-view[data-lmnb-live][data-done='1']").first.wait_for(
                state="attached", timeout=180_000)
            time.sleep(2.5)  # the last refreshes land
            seen.append(int(tree.get_attribute("data-num-nodes")))
            _dismiss_news_toast(page)
            page.screenshot(path=str(artifacts / "page.png"), full_page=True)
            page.locator(".jp-Notebook .jp-Cell").nth(1).screenshot(path=str(shot))
        finally:
            browser.close()
    print(f"\n{front_end} screenshot: {shot}  node counts seen: {seen}")
    if os.environ.get("LMNB_UPDATE_DOCS") and front_end == "jupyterlab":
        shutil.copy(shot, ROOT / "docs" / "dashboard.png")
    assert seen[0] < seen[-1], seen  # it grew while the program ran
    assert len(set(seen)) >= 3, seen  # and not in one jump: several live updates
    assert shot.stat().st_size > 10_000


def _dismiss_news_toast(page) -> None:
    """JupyterLab's "get news?" toast covers a corner of the page; close it if it shows."""
    from playwright.sync_api import Error

    for button in page.get_by_role("button", name="No", exact=True).all():
        with contextlib.suppress(Error):  # it may go away by itself
            button.click(timeout=2000)


def _watch_node_counts(page, timeout: float = 180) -> list[int]:
    """The tree view's node count every 100 ms until the program's token stream is done."""
    seen: list[int] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = page.evaluate(
            "() => { const t = document.querySelector('.lmnb-view[data-lmnb-live]"
            "[data-num-nodes]'); const d = document.querySelector('.lmnb-view"
            "[data-lmnb-live][data-done=\"1\"]'); return [t && t.dataset.numNodes, !!d]; }")
        if value[0] is not None and (not seen or seen[-1] != int(value[0])):
            seen.append(int(value[0]))
        if value[1]:
            break
        time.sleep(0.1)
    return seen
