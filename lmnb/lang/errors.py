"""Program errors and the source lines they point at.

Owns `ProgramError` (what a failed program raises on state access and from `run()`) and how a
failure is pinned to a line of the user's program: each op records the first frame outside the
lmnb package when it is appended (`call_site`), and a body exception is pinned to the deepest
frame of the program's own function (`site_in_traceback`). Knows nothing of states or models.
"""

from __future__ import annotations

import linecache
import sys
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, TracebackType

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_RUNTIME_DIR = str(Path(_PACKAGE_DIR) / "runtime")


@dataclass(frozen=True)
class Site:
    filename: str
    lineno: int
    function: str

    @property
    def source(self) -> str:
        return linecache.getline(self.filename, self.lineno).strip()

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class ProgramError(RuntimeError):
    """A program failed. `site` is the program line that caused it; `__cause__` the original."""

    def __init__(self, program: str, site: Site | None, cause: BaseException) -> None:
        self.program = program
        self.site = site
        self.cause = cause
        where = f" at {site}" if site else ""
        line = f"\n    {site.source}" if site and site.source else ""
        super().__init__(f"program {program!r} failed{where}{line}\n{_describe(cause)}")


class MissingVariableError(ProgramError, KeyError):
    """`state[name]` for a variable the program never sets."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class RoleError(ValueError):
    """Roles used out of order: a role inside another, or an end without its begin."""


def _describe(cause: BaseException) -> str:
    if isinstance(cause, ProgramError):
        return str(cause)
    return f"{type(cause).__name__}: {cause}"


def _is_ours(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR) and not filename.startswith(_RUNTIME_DIR)


def call_site(depth: int = 1) -> Site | None:
    """The first frame above `depth` that is not in the lmnb language package."""
    frame = sys._getframe(depth)
    while frame is not None and _is_ours(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return None
    return Site(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)


def site_in_traceback(tb: TracebackType | None, code: CodeType) -> Site | None:
    """The line of `code` (the program function) deepest in the traceback, if any."""
    site = None
    while tb is not None:
        frame_code = tb.tb_frame.f_code
        if frame_code is code:
            site = Site(frame_code.co_filename, tb.tb_lineno, frame_code.co_name)
        tb = tb.tb_next
    return site
