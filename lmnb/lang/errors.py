"""Program errors and the source lines they point at.

Owns `ProgramError` (what a failed program raises on state access and from `run()`) and how a
failure is pinned to a line of the user's program: each op records the first frame outside the
lmnb package when it is appended (`call_site`), and a body exception is pinned to the deepest
frame of the program's own function (`site_in_traceback`). Knows nothing of states or models.

A `ProgramError` made from a cause is also an instance of the cause's class (a subclass of both,
made once per class), so `except ValueError:` around `run()` still catches a `ValueError` the
body raised, as it does under SGLang; where a class cannot be mixed in, the error only chains it.

How an error looks is the notebook layer's to say, through `presentation` (set by `lmnb.magics`
when loaded): a label for a source file (`Cell In[10]` for a cell), and IPython's
`_render_traceback_` hook (the short traceback of the user's own lines). Unset, a site names
its file and IPython shows its own traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import linecache
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, MemberDescriptorType, TracebackType
from typing import Any

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_RUNTIME_DIR = str(Path(_PACKAGE_DIR) / "runtime")


@dataclass
class Presentation:
    """What the notebook layer tells about showing errors; None where it says nothing."""

    source_label: Callable[[str], str | None] | None = None  # "Cell In[10]" for a cell's file
    render_traceback: Callable[[ProgramError], list[str]] | None = None  # IPython's hook

    def label(self, filename: str) -> str | None:
        return self.source_label(filename) if self.source_label is not None else None


presentation = Presentation()  # one per process, as IPython's shell is


@dataclass(frozen=True)
class Site:
    filename: str
    lineno: int
    function: str

    @property
    def source(self) -> str:
        return linecache.getline(self.filename, self.lineno).strip()

    def __str__(self) -> str:
        if (label := presentation.label(self.filename)) is not None:
            return f"{label}, line {self.lineno}"
        return f"{self.filename}:{self.lineno} in {self.function}"


class ProgramError(RuntimeError):
    """A program failed. `site` is the program line that caused it; `cause` and `__cause__` the
    original exception. `ProgramError(program, site, cause)` returns an instance of a subclass
    of both `ProgramError` and `type(cause)` (see `mixed_class`), with the cause's fields."""

    def __new__(cls, program: str, site: Site | None, cause: BaseException) -> ProgramError:
        if cls is ProgramError:
            cls = mixed_class(type(root_cause(cause)))
        try:
            return super().__new__(cls, program, site, cause)
        except TypeError:  # a cause class with its own layout (OSError's family) makes it
            return _layout_base(cls).__new__(cls)

    def __init__(self, program: str, site: Site | None, cause: BaseException) -> None:
        _copy_fields(self, root_cause(cause))
        self.program = program
        self.site = site
        self.cause = cause
        if cause is not self:
            self.__cause__ = cause
        where = f" at {site}" if site else ""
        line = f"\n    {site.source}" if site and site.source else ""
        super().__init__(f"program {program!r} failed{where}{line}\n{_describe(cause)}")

    def __str__(self) -> str:  # the message, whatever the mixed-in class would print
        return str(self.args[0]) if self.args else ""

    @property
    def _render_traceback_(self) -> Callable[[], list[str]]:
        """IPython's hook for showing an exception: the notebook layer's renderer when one is
        set (an AttributeError otherwise, so IPython shows its own traceback)."""
        render = presentation.render_traceback
        if render is None:
            raise AttributeError("_render_traceback_")
        return lambda: render(self)


_mixed: dict[type, type] = {}
_mixed_lock = threading.Lock()


def mixed_class(cause_type: type) -> type:
    """`ProgramError` and `cause_type` in one class, made once per class and cached; plain
    `ProgramError` where the two cannot be combined (a metaclass or MRO conflict, a class that
    refuses subclasses, a cause that is not an Exception). Never a StopIteration: raised from a
    generator (`text_iter`) it would turn into a bare RuntimeError."""
    unmixable = (ProgramError, StopIteration, StopAsyncIteration)
    if issubclass(cause_type, unmixable) or not issubclass(cause_type, Exception):
        return ProgramError
    with _mixed_lock:
        if cause_type not in _mixed:
            _mixed[cause_type] = _make_mixed(cause_type)
        return _mixed[cause_type]


def _make_mixed(cause_type: type) -> type:
    name = f"ProgramError[{cause_type.__name__}]"
    try:
        return type(name, (ProgramError, cause_type), {"__module__": __name__})
    except Exception:  # TypeError (layout, MRO, metaclass) or the class's own refusal
        return ProgramError


def _layout_base(cls: type) -> Any:
    """The class in `cls`'s MRO after ProgramError whose `__new__` builds the instance."""
    return next(k for k in cls.__mro__[1:] if not issubclass(k, ProgramError)
                and "__new__" in vars(k) and k is not RuntimeError)


def root_cause(cause: BaseException) -> BaseException:
    """The exception a chain of ProgramErrors started from."""
    while isinstance(cause, ProgramError) and cause.cause is not cause:
        cause = cause.cause
    return cause


def _copy_fields(error: BaseException, cause: BaseException) -> None:
    """The cause's attributes (its `__dict__` and built-in fields such as `errno`, `name`) on
    `error`, so handlers that read them keep working."""
    if error is cause:
        return
    for klass in type(cause).__mro__:
        if klass in (BaseException, object):
            break
        for name, attr in vars(klass).items():
            if isinstance(attr, MemberDescriptorType) and isinstance(error, klass):
                with contextlib.suppress(AttributeError, TypeError):  # a read-only field
                    setattr(error, name, getattr(cause, name))
    error.__dict__.update(getattr(cause, "__dict__", {}))


class MissingVariableError(ProgramError, KeyError):
    """`state[name]` for a variable the program never sets."""


def missing_variable(
    program: str, name: str, variables: Iterable[str], site: Site | None
) -> MissingVariableError:
    """The error for `state[name]`: names the state's variables and the closest to `name`."""
    names = list(variables)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    have = ("the state's variables: " + ", ".join(names)) if names else "the state has none"
    cause = KeyError(f"variable {name!r} is never set{hint} ({have})")
    return MissingVariableError(program, site, cause)


class RoleError(ValueError):
    """Roles used out of order: a role inside another, or an end without its begin."""


def _describe(cause: BaseException) -> str:
    if isinstance(cause, ProgramError):
        return str(cause)
    return f"{type(cause).__name__}: {message(cause)}"


def message(error: BaseException) -> str:
    """What an exception says (a KeyError's text without the quotes its str() adds)."""
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)


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
