"""The interpreter: one worker thread per program state, running its ops in order.

Owns a state's contents (token ids, text, variables, meta info, messages, role, var scopes),
its queue and worker thread, failure and cancellation, and the blocking reads; what each IR
node does is in `handlers` (the class mixes it in). The program
body only enqueues (`submit`), so it runs ahead while the worker calls the backend; forks and
batch items each have their own worker, so their requests reach the runtime together and get
batched there.

Invariant: `text` and `ids` grow by the same pieces: constant text tokenised on its own, and
generated ids as generated (fitted to the text where a stop string was cut; see `calls`). So
every request's prompt extends the previous one's ids exactly and hits the radix cache.

Knows nothing of the user-facing `ProgramState`; model calls go through `calls`.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass
from typing import Any

from lmnb.lang.backend.base import Prompt
from lmnb.lang.control import Cancelled, RunControl, TrackedBackend
from lmnb.lang.errors import ProgramError, Site, call_site, missing_variable
from lmnb.lang.events import EventLog, Segment, StreamRecorder, TokenLedger
from lmnb.lang.handlers import NodeHandlers
from lmnb.lang.ir import Expr, Fork, SetVar, flatten
from lmnb.lang.progress import RunningGen

# Keys states for the backends that keep something per turn (ids could be reused after a
# state is collected, and a backend must never serve one state's turn to another).
_STATE_KEYS = itertools.count(1)


@dataclass(frozen=True)
class Op:
    node: Expr
    site: Site | None  # the program line that appended it


class StreamExecutor(NodeHandlers):
    """The worker behind one `ProgramState` (the root of a run or a fork child)."""

    def __init__(
        self,
        backend: Any,
        defaults: Any,  # lmnb.runtime.SamplingParams: the run's defaults
        program: str,
        log: EventLog | None = None,
        owner: threading.Thread | None = None,
        control: RunControl | None = None,
        api_spec_tokens: int = 0,
    ) -> None:
        self.control = control or RunControl()
        self.api_spec_tokens = api_spec_tokens  # @function(num_api_spec_tokens=N), for APIs
        if not isinstance(backend, TrackedBackend):
            backend = TrackedBackend(backend, self.control)
        self.backend = backend
        self.ledger = TokenLedger()
        self.defaults = defaults
        self.program = program
        self.events = StreamRecorder(log or EventLog())
        # The thread that runs the program body: the only one that submits ops.
        self.owner = owner or threading.current_thread()
        self.children: list[StreamExecutor] = []
        self.error: ProgramError | None = None
        self.ids: list[int] = []
        self.text = ""
        self.live_text = ""  # the running gen's text so far (not yet in `text`)
        self.running_gen: RunningGen | None = None  # the gen in flight, for `progress`
        self.variables: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.messages: list[dict[str, str]] = []
        self.role: str | None = None
        self._role_start = 0
        self._turn = 0  # counts role turns begun: (state, turn) keys a turn's speculation
        self._key = next(_STATE_KEYS)
        self._scopes: dict[str, int] = {}  # open var scopes -> text offset
        self._fork_start = (0, 0)  # (text offset, ids offset) where this fork child began
        self._new_vars: list[str] = []  # names set since this child was forked, in order
        self._stream: list[tuple[frozenset[str], str]] = []  # (active names, text) for text_iter
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._submitted = 0
        self._done = 0
        self._open = True  # more ops may come
        self._ready = threading.Event()  # a fork child waits for its parent's Fork op
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"lmnb-{program}")

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> StreamExecutor:
        self._ready.set()
        self._thread.start()
        return self

    def spawn_child(self) -> StreamExecutor:
        """A child that starts once this state's `Fork` op has run."""
        child = StreamExecutor(
            self.backend, self.defaults, self.program, self.events.log, self.owner, self.control,
            self.api_spec_tokens,
        )
        self.children.append(child)
        child._thread.start()
        return child

    def submit(self, expr: Expr, site: Site | None) -> None:
        if self.error is not None:
            raise self.error
        with self._cond:
            if not self._open:
                raise RuntimeError(
                    "this state takes no more ops: its program ended or it was joined"
                )
            for node in flatten(expr):
                self._submitted += 1
                self._queue.put(Op(node, site))

    def assign(self, name: str, value: Any, site: Site | None) -> None:
        """`state[name] = value`: in order with the ops while more can come, at once after."""
        with self._cond:
            if self._open:
                self.submit(SetVar(name, value), site)
                return
        self.wait_idle()
        self.set_var(name, value)

    def close(self) -> None:
        """No more ops: the worker exits after the queued ones; children close too."""
        with self._cond:
            if not self._open:
                return
            self._open = False
            self._cond.notify_all()
        self._queue.put(None)
        for child in self.children:
            child.close()

    def fail(self, error: ProgramError) -> None:
        with self._cond:
            if self.error is not None:
                return
            self.error = error
            self._cond.notify_all()
        self.events.error(str(error))

    def cancel(self) -> int:
        """Abort this run's requests and fail every state of it; the runtime keeps serving.
        Returns how many requests were still running."""
        num_aborted = self.control.cancel()
        self._fail_tree(ProgramError(self.program, None, Cancelled("the program was cancelled")))
        return num_aborted

    def _fail_tree(self, error: ProgramError) -> None:
        self.fail(error)
        for child in self.children:
            child._fail_tree(error)

    def _loop(self) -> None:
        self._ready.wait()
        while (op := self._queue.get()) is not None:
            self._run(op)
            with self._cond:
                self._done += 1
                self._cond.notify_all()

    def _run(self, op: Op) -> None:
        if self.error is not None:
            self._skip(op)
            return
        try:
            self.execute(op.node)
        except ProgramError as error:
            self.fail(error)
            self._skip(op)
        except Exception as exc:
            error = ProgramError(self.program, op.site, exc)
            error.__cause__ = exc
            self.fail(error)
            self._skip(op)  # a failed Fork still releases its children (failed), never hangs

    def _skip(self, op: Op) -> None:
        """After a failure ops do nothing, but children waiting on a fork fail too."""
        if isinstance(op.node, Fork):
            for child in op.node.children:
                child.fail(self.error)
                child._ready.set()

    # ---- waiting --------------------------------------------------------------------------

    def _idle(self) -> bool:
        return self._done == self._submitted

    def _settled(self, until_closed: bool) -> bool:
        """Idle, and (with `until_closed`, for a thread other than the body's) closed too."""
        if not self._idle():
            return False
        return not until_closed or not self._open or threading.current_thread() is self.owner

    def wait_idle(self, recursive: bool = False, until_closed: bool = False) -> None:
        """Wait for the ops submitted so far; with `until_closed`, a reader outside the body
        also waits for the body to end, so the ops it has yet to submit are waited for too."""
        with self._cond:
            self._cond.wait_for(lambda: self._settled(until_closed))
        if recursive:
            for child in list(self.children):
                child.wait_idle(recursive=True, until_closed=until_closed)

    def finished(self) -> bool:
        """The body has ended and every op here and in the forks has run (never blocks)."""
        with self._cond:
            done = not self._open and self._idle()
        return done and all(c.finished() for c in list(self.children))

    def first_error(self) -> ProgramError | None:
        """This state's error, or else the first of its descendants'."""
        if self.error is not None:
            return self.error
        return next((e for c in self.children if (e := c.first_error()) is not None), None)

    def get_var(self, name: str) -> Any:
        """Block until `name` is set; missing when the worker is idle and no more ops can come."""
        with self._cond:
            while True:
                if name in self.variables:
                    return self.variables[name]
                if self.error is not None:
                    raise self.error
                no_more = not self._open or threading.current_thread() is self.owner
                if self._idle() and no_more:
                    raise missing_variable(self.program, name, self.variables, call_site())
                self._cond.wait()

    def stream_entries(
        self, start: int, var_name: str | None = None
    ) -> tuple[list[tuple[frozenset[str], str]], bool]:
        """Entries of the text stream from `start` (waiting for one) and whether the stream has
        ended: the state is done, or variable `var_name` is set (its text is all in)."""
        with self._cond:

            def ended() -> bool:
                done = not self._open and self._idle()
                return self.error is not None or done or var_name in self.variables

            self._cond.wait_for(lambda: len(self._stream) > start or ended())
            return self._stream[start:], ended()

    # ---- appending ------------------------------------------------------------------------

    def _names(self, extra: str | None = None) -> frozenset[str]:
        return frozenset(self._scopes) | ({extra} if extra else set())

    def _append(
        self, text: str, ids: list[int], name: str | None = None, streamed: bool = False,
        kind: str = "text", forced: tuple[int, ...] = (),
    ) -> None:
        """Append a piece (to the text stream too, unless it was `streamed` chunk by chunk);
        the ledger records where its ids came from (`kind`: text, gen or select)."""
        with self._cond:
            self.ledger.add_segment(Segment(len(self.ids), len(ids), kind, name, forced))
            self.text += text
            self.ids += ids
            self.live_text = ""
            if text and not streamed:
                self._stream.append((self._names(name), text))
            self._cond.notify_all()

    def prompt(self) -> Prompt:
        """The state as a backend call sees it (ids stay empty on a text backend)."""
        with self._cond:
            role_text = self.text[self._role_start :] if self.role is not None else ""
            return Prompt(list(self.ids), self.text, list(self.messages), self.role, role_text,
                          self.api_spec_tokens, (self._key, self._turn))

    def _append_text(self, text: str) -> None:
        if not text:
            return
        tokenizer = self.backend.tokenizer
        ids = tokenizer.encode(text) if tokenizer is not None else []
        self._append(text, ids)
        self.events.tokens(None, text, len(ids), "text")

    def _stream_chunk(self, name: str | None, text: str, num_tokens: int) -> None:
        with self._cond:
            self._stream.append((self._names(name), text))
            self.live_text += text
            self._cond.notify_all()
        if (running := self.running_gen) is not None:
            running.add(num_tokens)
        self.events.tokens(name, text, num_tokens, "gen")

    def set_var(self, name: str, value: Any, meta: Any = None) -> None:
        with self._cond:
            self.variables[name] = value
            if meta is not None:
                self.meta[name] = meta
            if name not in self._new_vars:
                self._new_vars.append(name)
            self._cond.notify_all()
