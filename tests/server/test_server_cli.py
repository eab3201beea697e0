"""`lmnb serve` as a subprocess on a free port: it prints its URL, answers /health and one
/generate, and exits on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_lmnb_serve_subprocess() -> None:
    cmd = [sys.executable, "-m", "lmnb.cli", "serve", "--port", "0", "--api-key", "k",
           "--max-tokens-in-cache", "2048", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url = None
        deadline = time.time() + 180
        lines = []
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "lmnb serve exited:\n" + "".join(lines)
            lines.append(line)
            if line.startswith("lmnb serving "):
                url = line.split(" at ")[-1].strip()
        assert url and url.startswith("http://127.0.0.1:"), lines
        with httpx.Client(base_url=url, timeout=60, headers={"x-api-key": "k"}) as c:
            assert c.get("/health").status_code == 200
            r = c.post("/generate", json={"text": "Hello", "sampling_params":
                                          {"max_new_tokens": 2, "temperature": 0}})
            assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0
