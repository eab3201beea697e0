"""The kernels A/B: the base commit's sources as git holds them, shims only for entry points
the base lacks, and a run on the real default model whose two engines agree. Behaviour only,
never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import ab_kernels as ab  # noqa: E402


def test_base_sources_are_the_commits_files(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ab.SHIMS, "lmnb_not_there_yet",
                        "int lmnb_not_there_yet(void) { return 7; }\n")
    shims = ab.base_sources("HEAD", tmp_path)
    assert shims == ["lmnb_not_there_yet"]  # the real entry points are all in HEAD
    for name in ("attention.c", "forward.c", "linear.h"):
        want = subprocess.run(["git", "show", f"HEAD:{ab.CSRC}/{name}"], cwd=ab.REPO,
                              capture_output=True, check=True).stdout
        assert (tmp_path / name).read_bytes() == want
    assert (tmp_path / "linear.c").read_text().endswith(ab.SHIMS["lmnb_not_there_yet"])


def test_a_prefill_ab_runs_both_engines_alike(tmp_path: Path) -> None:
    result = ab.main(["--base", "HEAD", "--workload", "prefill", "--pairs", "2", "--prompts",
                      "2", "--tokens", "40", "--results-dir", str(tmp_path), "--name", "ab"])
    assert result["same_outputs"] is True and result["shims"] == []
    assert [len(result["seconds"][n]) for n in "AB"] == [2, 2]
    saved = json.loads((tmp_path / "ab.json").read_text())
    assert saved["b_over_a_best"] == pytest.approx(result["best_s"]["B"] / result["best_s"]["A"])
