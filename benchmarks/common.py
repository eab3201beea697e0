"""Helpers shared by the benchmarks: timing, reproducible synthetic prompts, result rows,
a rich table, a Markdown table and the JSON file under `benchmarks/results/`.

Owns how a benchmark measures and reports. Knows nothing of any one workload or system.
Speed is claimed only as ratios measured side by side in one run (DESIGN.md, "Measuring").
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---- timing -------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall times of repeated runs; `best` (the minimum) is what rows report, since on a
    shared machine noise only ever adds time."""

    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        s = sorted(self.seconds)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2

    def as_dict(self) -> dict[str, Any]:
        return {"best_s": self.best, "median_s": self.median, "runs_s": self.seconds}


def log(message: str) -> None:
    """Progress on stderr (stdout keeps the tables)."""
    print(message, file=sys.stderr, flush=True)


def time_once(fn: Callable[[], Any], label: str | None = None) -> tuple[float, Any]:
    """Seconds one call of `fn` takes, and what it returned; logs them under `label`."""
    started = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - started
    if label:
        log(f"  {label}: {seconds:.2f} s")
    return seconds, out


def time_runs(fn: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None,
              label: str | None = None) -> Timing:
    """`repeats` timed calls of `fn`; `setup` (untimed) runs before each."""
    timing = Timing()
    for _ in range(repeats):
        if setup is not None:
            setup()
        timing.seconds.append(time_once(fn, label)[0])
    return timing


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int,
                     setup: Callable[[str], Any] | None = None, label: str | None = None,
                     ) -> dict[str, Timing]:
    """Time several systems in turns (a, b, a, b, ...) so that drifting load on a shared
    machine falls on all of them alike; `setup(name)` (untimed) runs before each call."""
    timings = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if setup is not None:
                setup(name)
            run_label = f"{label} {name}" if label else None
            timings[name].seconds.append(time_once(fn, run_label)[0])
    return timings


# ---- reproducible synthetic prompts ---------------------------------------------------------


class SyntheticText:
    """Prompts as token ids of a seeded random word text, so every run sees the same inputs.

    The words are whole-word tokens of the tokenizer's own vocabulary (a leading space and
    4+ letters), so a prompt that starts with word `w` starts with the token of `w`: distinct
    first words give prompts that share no prefix at all.
    """

    def __init__(self, tokenizer: Any, seed: int = 0, num_words: int = 4000) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        words = sorted({t[1:] for t in tokenizer.get_vocab()
                        if t.startswith("\u0120") and re.fullmatch(r"[a-z]{4,}", t[1:])})
        if len(words) < 100:
            raise RuntimeError(f"too few word tokens in the vocabulary ({len(words)})")
        self.words = self.rng.sample(words, min(num_words, len(words)))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def ids(self, num_tokens: int, first_word: str | None = None) -> list[int]:
        """Exactly `num_tokens` ids of random words (starting with `first_word` if given)."""
        words = [first_word] if first_word else []
        ids: list[int] = []
        while len(ids) < num_tokens:
            words += self.rng.choices(self.words, k=num_tokens)
            ids = self.encode(" " + " ".join(words))
        return ids[:num_tokens]

    def distinct(self, num_prompts: int, num_tokens: int) -> list[list[int]]:
        """Prompts that differ from their first token on (no two share any prefix)."""
        firsts = self.rng.sample(self.words, num_prompts)
        prompts = [self.ids(num_tokens, first) for first in firsts]
        if len({p[0] for p in prompts}) != num_prompts:
            raise RuntimeError("synthetic prompts share a first token")
        return prompts


# ---- rows, tables and files ----------------------------------------------------------------


@dataclass
class Row:
    """One line of a results table: a metric for lmnb against a baseline, and its target.

    `ratio` is lmnb / baseline for throughputs (`higher_is_better`), baseline-relative
    otherwise, as the benchmark defines it; `target` is a text like ">= 1.3x"; `passed` is
    None when the row has no target.
    """

    workload: str
    metric: str
    lmnb: float | None
    baseline: float | None
    baseline_name: str
    ratio: float | None
    target: str = ""
    passed: bool | None = None
    unit: str = ""
    note: str = ""


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def verdict(passed: bool | None) -> str:
    return "" if passed is None else ("PASS" if passed else "FAIL")


TABLE_COLUMNS = ("workload", "metric", "lmnb", "baseline", "baseline is", "ratio", "target",
                 "result", "note")
NUMERIC_COLUMNS = ("lmnb", "baseline", "ratio")


def row_cells(row: Row) -> list[str]:
    metric = f"{row.metric} ({row.unit})" if row.unit else row.metric
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
    return [row.workload, metric, fmt(row.lmnb), fmt(row.baseline), row.baseline_name, ratio,
            row.target, verdict(row.passed), row.note]


def print_table(title: str, rows: Sequence[Row], caption: str = "") -> None:
    """The rows as a rich table on the terminal (Markdown text when rich is missing)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(markdown_table(rows))
        return
    console = Console()
    if not console.is_terminal:  # piped to a file or a log: no wrapping at 80 columns
        console = Console(width=160)
    table = Table(title=title, caption=caption or None)
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="right" if name in NUMERIC_COLUMNS else "left")
    result = TABLE_COLUMNS.index("result")
    for row in rows:
        cells = row_cells(row)
        style = {True: "bold green", False: "bold red"}.get(row.passed)  # type: ignore[arg-type]
        if style:
            cells[result] = f"[{style}]{cells[result]}[/]"
        table.add_row(*cells)
    console.print(table)


def markdown_table(rows: Iterable[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in row_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_grid(title: str, header: Sequence[str], lines: Sequence[Sequence[str]],
               caption: str = "") -> None:
    """A plain table of text cells (first column left, the rest right-aligned) as a rich
    table on the terminal (Markdown text when rich is missing)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(markdown_grid(header, lines))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    table = Table(title=title, caption=caption or None)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for cells in lines:
        table.add_row(*cells)
    console.print(table)


def markdown_grid(header: Sequence[str], lines: Iterable[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for cells in lines:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


def machine_info(**extra: Any) -> dict[str, Any]:
    """The machine and library versions a result was measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import transformers

        info["transformers_version"] = transformers.__version__
    except ImportError:
        pass
    info.update(extra)
    return info


def write_json(name: str, data: dict[str, Any], rows: Sequence[Row] = (),
               directory: Path | None = None) -> Path:
    """Writes `<directory>/<name>.json` (default `benchmarks/results/`, with the rows, if
    any); returns its path."""
    directory = directory or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = dict(data)
    if rows:
        payload["rows"] = [asdict(r) for r in rows]
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(ABSOLUTE_PATH.sub(r"\1", text) + "\n")
    return path


# an absolute path in a result (a binary, a command line) -> its last part: the files are
# committed, and this machine's folders mean nothing on another
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[\w.+-]+/)+([\w.+-]+)")


def parse_only(value: str | None, known: Sequence[str]) -> list[str]:
    """`--only a,b` as a list in the benchmark's own order; every known name when empty."""
    if not value:
        return list(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(known)}")
    return [k for k in known if k in names]
