"""What a program body sees as `s`: `ProgramState`, and `ForkGroup` for `s.fork(n)`.

Owns the user-facing API of a state (SGLang's names): appending with `+=`, blocking reads,
roles and var scopes as context managers, forks, streaming. Every append is recorded with the
program line that made it, so failures point there. Knows nothing of how ops run: it hands them
to its `interpreter.StreamExecutor`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from lmnb.lang.errors import ProgramError, call_site
from lmnb.lang.events import EventLog, TraceEvent
from lmnb.lang.handlers import JOIN_MODES
from lmnb.lang.interpreter import StreamExecutor
from lmnb.lang.ir import (
    Expr,
    Fork,
    Join,
    RoleBegin,
    RoleEnd,
    SetVar,
    VarScopeBegin,
    VarScopeEnd,
    as_expr,
)
from lmnb.lang.progress import Progress
from lmnb.lang.progress import read as read_progress


class Scope:
    """A `with` block that appends `begin` on entry and `end` on exit."""

    def __init__(self, state: Any, begin: Expr, end: Expr) -> None:
        self._state, self._begin, self._end = state, begin, end

    def __enter__(self) -> Any:
        self._state += self._begin
        return self._state

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._state += self._end


class StateBase:
    """The API shared by real states and tracing states: everything built on `__iadd__`."""

    def __iadd__(self, expr: object) -> StateBase:  # pragma: no cover - overridden
        raise NotImplementedError

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ForkGroup:
        raise NotImplementedError  # pragma: no cover - overridden

    def system(self, expr: object = None) -> Scope | None:
        return self._role("system", expr)

    def user(self, expr: object = None) -> Scope | None:
        return self._role("user", expr)

    def assistant(self, expr: object = None) -> Scope | None:
        return self._role("assistant", expr)

    def _role(self, role: str, expr: object) -> Scope | None:
        """`s.user("hi")` appends a whole message; `with s.user():` wraps a block."""
        if expr is None:
            return Scope(self, RoleBegin(role), RoleEnd(role))
        self += RoleBegin(role) + as_expr(expr) + RoleEnd(role)
        return None

    def var_scope(self, name: str) -> Scope:
        """`with s.var_scope("x"):` stores the text appended inside as variable `x`."""
        return Scope(self, VarScopeBegin(name), VarScopeEnd(name))

    def __setitem__(self, name: str, value: Any) -> None:
        self += SetVar(name, value)

    def set_var(self, name: str, value: Any) -> None:
        self[name] = value

    def get_var(self, name: str) -> Any:
        return self[name]

    @contextlib.contextmanager
    def copy(self, position_ids_offset: Any = None) -> Iterator[Any]:
        """SGLang's `with s.copy() as c:` — `c` is a fork of this state (its text, variables
        and role so far); leaving the block joins it back: the variables `c` made become
        one-item lists here (`gather_variable`), and this state's text is unchanged."""
        group = self.fork(1, position_ids_offset)
        yield group[0]  # an exception in the block propagates without the join
        group.join()


class ProgramState(StateBase):
    def __init__(self, executor: StreamExecutor, wait_each: bool = False) -> None:
        self._ex = executor
        self.ret_value: Any = None
        # run(use_thread=False), SGLang's: each append runs before `+=` returns (no run-ahead)
        self._wait_each = wait_each

    def __iadd__(self, expr: object) -> ProgramState:
        self._ex.submit(as_expr(expr), call_site())
        if self._wait_each:
            self._ex.wait_idle()
            if self._ex.error is not None:
                raise self._ex.error
        return self

    def __getitem__(self, name: str) -> Any:
        """The variable's value, once the op that sets it has run."""
        return self._ex.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._ex.assign(name, value, call_site())

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self._ex.variables

    def get_meta_info(self, name: str) -> Any:
        """Counters of the call that set `name`: prompt, cached and completion tokens, finish
        reason, logprobs when asked, grammar counters; for `select`, every choice's scores."""
        self[name]
        return self._ex.meta.get(name)

    def sync(self) -> ProgramState:
        """Wait until every op appended so far (here and in forks) has run; raise on failure.
        Outside the program's body (a streamed run) it waits for the body to end as well."""
        self._ex.wait_idle(recursive=True, until_closed=True)
        if (error := self._ex.first_error()) is not None:
            raise error
        return self

    def error(self) -> ProgramError | None:
        self._ex.wait_idle(recursive=True, until_closed=True)
        return self._ex.first_error()

    def text(self) -> str:
        return self.sync()._ex.text

    def token_ids(self) -> list[int]:
        return list(self.sync()._ex.ids)

    def messages(self) -> list[dict[str, str]]:
        return list(self.sync()._ex.messages)

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """The text as it is appended (only variable `var_name`'s text, when given)."""
        seen = 0
        while True:
            entries, ended = self._ex.stream_entries(seen, var_name)
            seen += len(entries)
            for names, text in entries:
                if var_name is None or var_name in names:
                    yield text
            if ended:
                break
        if self._ex.error is not None:
            raise self._ex.error

    async def text_async_iter(
        self, var_name: str | None = None, return_meta_data: bool = False
    ) -> AsyncIterator[Any]:
        """`text_iter` for asyncio: the waits run in the loop's default executor, so the event
        loop keeps serving. With `return_meta_data` (and `var_name`), yields `(text, meta)`:
        the variable's meta info once it is set, `{}` while its gen runs; if it is set after
        its last chunk, a final `("", meta)` follows."""
        loop = asyncio.get_running_loop()
        pairs = return_meta_data and var_name is not None  # SGLang pairs only a variable's
        seen, meta_sent = 0, False
        while True:
            entries, ended = await loop.run_in_executor(
                None, self._ex.stream_entries, seen, var_name)
            seen += len(entries)
            for names, text in entries:
                if var_name is None or var_name in names:
                    if not pairs:
                        yield text
                        continue
                    meta = self._ex.meta.get(var_name) if var_name in self._ex.variables else None
                    meta_sent = meta is not None
                    yield text, meta or {}
            if ended:
                break
        if self._ex.error is not None:
            raise self._ex.error
        if pairs and not meta_sent and var_name in self._ex.variables:
            yield "", self._ex.meta.get(var_name) or {}

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ForkGroup:
        """`size` children that start from this state's text once the ops before run."""
        if position_ids_offset is not None:
            raise NotImplementedError("position_ids_offset is not supported")
        children = [self._ex.spawn_child() for _ in range(size)]
        self._ex.submit(Fork(tuple(children)), call_site())
        return ForkGroup([ProgramState(c) for c in children], self)

    def _join(self, children: Sequence[ProgramState], mode: str) -> None:
        self._ex.submit(Join(tuple(c._ex for c in children), mode), call_site())

    def cancel(self) -> int:
        """Stop the program: abort its running requests (the runtime frees their slots and
        keeps serving) and fail it with `Cancelled`. Returns how many requests were aborted."""
        return self._ex.cancel()

    def finished(self) -> bool:
        """Whether the body has ended and every op has run (never blocks)."""
        return self._ex.finished()

    def progress(self) -> Progress:
        """Where the run stands, as plain data, without waiting for it (what views draw): each
        stream's tokens and their categories, its forks (nested), the running gens' tokens so
        far / max and tokens/s, elapsed time, status (running, done, failed, cancelled) and the
        totals of the run's model calls. See `lmnb.lang.progress`."""
        return read_progress(self._ex)

    @property
    def tokenizer(self) -> Any:
        """The backend's tokenizer (None on a text backend): what views decode ids with."""
        return self._ex.backend.tokenizer

    @property
    def event_log(self) -> EventLog:
        return self._ex.events.log

    def events(self) -> list[TraceEvent]:
        return self._ex.events.log.events()

    def __repr__(self) -> str:
        return f"ProgramState({self._ex.text!r})"


class ForkGroup:
    """The children of `s.fork(n)`: index them, append to all, then `join()`."""

    def __init__(self, states: Sequence[StateBase], parent: Any) -> None:
        self.states = list(states)
        self._parent = parent

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[StateBase]:
        return iter(self.states)

    def __getitem__(self, i: int) -> Any:
        return self.states[i]

    def __setitem__(self, i: int, value: Any) -> None:
        if value is not self.states[i]:  # `forks[i] += x` assigns the same state back
            raise TypeError("assign to fork children only through +=")

    def __iadd__(self, other: Callable[[int], object] | Sequence[object] | object) -> ForkGroup:
        """A function of the child index, a list with one item per child, or one expression."""
        for i, state in enumerate(self.states):
            if callable(other):
                state += other(i)
            elif isinstance(other, list | tuple):
                state += other[i]
            else:
                state += other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """`gather_variable`: variables the children made become lists on the parent.
        `concate_and_append`: the children's texts are appended to the parent in order."""
        if mode not in JOIN_MODES:
            raise ValueError(f"join mode must be one of {JOIN_MODES}, got {mode!r}")
        self._parent._join(self.states, mode)
