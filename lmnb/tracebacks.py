"""What a failed program shows in a notebook: a short traceback of the user's own lines.

Owns choosing the frames a user wrote and rendering them as IPython does (`Cell In[10], line 2`
and the lines around it), ending with the exception a user should read: the body's own (a
`NameError` for a typo), not the `ProgramError` wrapping it. The frames kept:

- where the program was started or read (a notebook line calling `qa.run()` or `state["x"]`):
  the frames outside the lmnb package up to where lmnb was entered; for a `%%lmprogram` cell,
  none (what is outside the magic is IPython calling it, not the user's code);
- where it failed: the frames outside lmnb of the exception the body raised, else the program
  line that appended the failing call (`ProgramError.site`).

Frames IPython hides (`__tracebackhide__`) stay hidden. `%lmnb debug` shows IPython's full
traceback instead (`lmnb.magics`). Knows nothing of IPython (a label function stands for it)
nor of how programs run; reads only an error's traceback, causes and site.
"""

from __future__ import annotations

import linecache
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import lmnb
from lmnb.lang.errors import ProgramError, Site, message, mixed_class, root_cause

PACKAGE_DIR = str(Path(lmnb.__file__).resolve().parent)
MAGICS_FILE = str(Path(PACKAGE_DIR) / "magics.py")
_INSIDE = PACKAGE_DIR + os.sep
CELL_MAGIC = "lmprogram"  # the function of `%%lmprogram` in magics.py
HINT = "(lmnb's own frames are hidden; `%lmnb debug` shows them)"
RULE = "-" * 75
CONTEXT = 2  # source lines shown either side of a frame's line

Label = Callable[[str], str | None]  # a source file's name as the notebook shows it, or None


def internal(filename: str) -> bool:
    """A file of the lmnb package (`<ipython-input-...>` and other pseudo-files are not)."""
    return not filename.startswith("<") and str(Path(filename).resolve()).startswith(_INSIDE)


def walk(tb: TracebackType | None) -> list[tuple[Site, bool]]:
    """(site, hidden) for each entry of a traceback, outermost first."""
    out = []
    while tb is not None:
        code = tb.tb_frame.f_code
        hidden = bool(tb.tb_frame.f_locals.get("__tracebackhide__", False))
        out.append((Site(code.co_filename, tb.tb_lineno, code.co_name), hidden))
        tb = tb.tb_next
    return out


def calling_frames(error: BaseException) -> list[Site]:
    """The user's frames that led into lmnb (none for a `%%lmprogram` cell)."""
    entries = walk(error.__traceback__)
    magic = [i for i, (site, _) in enumerate(entries)
             if site.function == CELL_MAGIC and site.filename == MAGICS_FILE]
    if magic:
        entries = entries[magic[-1] + 1:]
    out = []
    for site, hidden in entries:
        if internal(site.filename):
            break
        if not hidden:
            out.append(site)
    return out


def failing_frames(error: BaseException) -> list[Site]:
    """The user's frames where the program failed: the body's exception's, else the site."""
    root = root_cause(error)
    frames = [] if root is error else [
        site for site, hidden in walk(root.__traceback__)
        if not hidden and not internal(site.filename)]
    site = getattr(error, "site", None)
    return frames or ([site] if site is not None else [])


def user_frames(error: BaseException) -> list[Site]:
    """Calling frames, then failing frames, a line repeated at the seam kept once."""
    out: list[Site] = []
    for site in calling_frames(error) + failing_frames(error):
        if not out or (out[-1].filename, out[-1].lineno) != (site.filename, site.lineno):
            out.append(site)
    return out


def shown_exception(error: BaseException) -> tuple[str, str]:
    """(class name, message) to end with: the root cause's, unless the error is a named kind
    of ProgramError (`MissingVariableError`), whose name says more than its cause's."""
    root = root_cause(error)
    plain = isinstance(error, ProgramError) and type(error) in (
        ProgramError, mixed_class(type(root)))
    name = type(root).__name__ if plain or not isinstance(error, ProgramError) \
        else type(error).__name__
    return name, message(root)


def render(error: BaseException, label: Label | None = None) -> list[str]:
    """The short traceback as IPython's structured traceback: a list of text blocks."""
    name, text = shown_exception(error)
    blocks = [f"{RULE}\n{name:<42}Traceback (most recent call last)"]
    blocks += [render_frame(site, label) for site in user_frames(error)]
    blocks.append(f"{name}: {text}\n{HINT}" if text else f"{name}\n{HINT}")
    return blocks


def render_frame(site: Site, label: Label | None = None) -> str:
    """`Cell In[10], line 2` (or `File path:12`, `, in f()` inside a function) and the lines
    around it, the failing one marked `---->` as IPython marks it."""
    name = label(site.filename) if label is not None else None
    head = f"{name}, line {site.lineno}" if name else f"File {site.filename}:{site.lineno}"
    if site.function not in ("<module>", "lmprogram_cell"):
        head += f", in {site.function}()"
    lines = linecache.getlines(site.filename)
    first, last = max(1, site.lineno - CONTEXT), min(len(lines), site.lineno + CONTEXT)
    width = len(str(last))
    body = [
        f"{'---->' if n == site.lineno else '':<5} {n:>{width}} {lines[n - 1].rstrip()}"
        for n in range(first, last + 1)
    ]
    return "\n".join([head, *body]) + "\n"
