"""What each IR node does to a program state: text, gen, select, roles, var scopes, fork and
join. Mixed into `interpreter.StreamExecutor`, whose worker thread calls `execute` for each op;
the handlers use its state (ids, text, variables, ...), its appends and its backend.

Model calls go through `calls`; the ledger and events record each call's cached and computed
tokens for the views.
"""

from __future__ import annotations

from typing import Any

from lmnb.lang import calls
from lmnb.lang.control import Cancelled
from lmnb.lang.errors import RoleError
from lmnb.lang.events import ModelCall
from lmnb.lang.ir import (
    Expr,
    Fork,
    Gen,
    Join,
    RoleBegin,
    RoleEnd,
    Select,
    SetVar,
    Text,
    VarScopeBegin,
    VarScopeEnd,
)
from lmnb.lang.progress import RunningGen

JOIN_MODES = ("gather_variable", "concate_and_append")


class NodeHandlers:
    """The handler for each IR node (a mixin of `StreamExecutor`)."""

    def execute(self, node: Expr) -> None:
        match node:
            case Text():
                self._append_text(node.value)
            case Gen():
                self._gen(node)
            case Select():
                self._select(node)
            case RoleBegin():
                self._role_begin(node)
            case RoleEnd():
                self._role_end(node)
            case VarScopeBegin():
                self._scopes[node.name] = len(self.text)
            case VarScopeEnd():
                self._var_scope_end(node)
            case SetVar():
                self.set_var(node.name, node.value)
            case Fork():
                self._fork(node)
            case Join():
                self._join(node)
            case _:
                raise TypeError(f"cannot run {type(node).__name__} nodes")

    def _gen(self, node: Gen) -> None:
        self.events.start("gen", node.name)
        params = self.defaults.merged(**node.overrides)
        on_chunk = lambda text, num_tokens: self._stream_chunk(node.name, text, num_tokens)
        prompt = self.prompt()
        prefix = prompt.ids
        with self._cond:
            self.running_gen = RunningGen(node.name, getattr(params, "max_new_tokens", None))
        try:
            piece = calls.generate(self.backend, prompt, params, node.dtype, on_chunk)
        finally:
            with self._cond:
                self.running_gen = None
        if self.control.cancelled:
            raise Cancelled("the program was cancelled")
        self._record_call(len(prefix), piece.counts.get("cached_tokens", 0), "gen")
        forced = tuple(i for i in piece.meta.get("forced_positions") or () if i < len(piece.ids))
        self._append(piece.text, piece.ids, streamed=True, kind="gen", forced=forced)
        self._finish(node.name, "gen", piece)

    def _select(self, node: Select) -> None:
        self.events.start("select", node.name)
        prompt = self.prompt()
        prefix = prompt.ids
        piece = calls.select(self.backend, prompt, node.choices, node.method)
        self._record_call(len(prefix), min(piece.meta.get("cached_tokens") or [0]), "select")
        self._append(piece.text, piece.ids, node.name, kind="select")
        self._finish(node.name, "select", piece)

    def _record_call(self, prefix_len: int, cached_len: int, op: str) -> None:
        self.ledger.add_call(ModelCall(prefix_len, min(cached_len, prefix_len), op))

    def _finish(self, name: str | None, op: str, piece: calls.Piece) -> None:
        if name is not None:
            self.set_var(name, piece.text, piece.meta)
        self.events.end(op, name, piece.counts)

    def _role_begin(self, node: RoleBegin) -> None:
        if self.role is not None:
            raise RoleError(f"role {node.role!r} begins inside the open {self.role!r} role")
        template = self.backend.chat_template
        if node.role != "system" and not self.messages:
            self._append_text(template.head)
        self._append_text(template.prefix(node.role))
        self.role = node.role
        self._role_start = len(self.text)
        self._turn += 1

    def _role_end(self, node: RoleEnd) -> None:
        if self.role != node.role:
            raise RoleError(f"role {node.role!r} ends but the open role is {self.role!r}")
        self.messages.append({"role": node.role, "content": self.text[self._role_start :]})
        self._append_text(self.backend.chat_template.suffix(node.role))
        self.role = None
        # A backend that keeps something per turn (the OpenAI backend's speculative output)
        # drops it now.
        if (end_turn := getattr(self.backend, "end_turn", None)) is not None:
            end_turn((self._key, self._turn))

    def _var_scope_end(self, node: VarScopeEnd) -> None:
        if node.name not in self._scopes:
            raise ValueError(f"var_scope {node.name!r} ends without its begin")
        start = self._scopes.pop(node.name)
        self.set_var(node.name, self.text[start:])

    def _fork(self, node: Fork) -> None:
        self.events.start("fork")
        # Commit the shared prefix once, so that every child hits it.
        counts = calls.commit_prefix(self.backend, self.prompt())
        if counts:
            self._record_call(len(self.ids), counts["cached_tokens"], "fork")
        for child in node.children:
            child._start_from(self)
        self.events.fork([c.events.stream_id for c in node.children], len(self.ids))
        self.events.end("fork", None, counts)

    def _start_from(self, parent: Any) -> None:
        self.ids = list(parent.ids)
        self.text = parent.text
        self.variables = dict(parent.variables)
        self.meta = dict(parent.meta)
        self.messages = list(parent.messages)
        self.role, self._role_start = parent.role, parent._role_start
        self._scopes = dict(parent._scopes)
        self.ledger = parent.ledger.copy()
        self._fork_start = (len(self.text), len(self.ids))
        self._ready.set()

    def _join(self, node: Join) -> None:
        self.events.start("join")
        for child in node.children:
            child.wait_idle(recursive=True)
            if (error := child.first_error()) is not None:
                raise error
        match node.mode:
            case "gather_variable":
                self._gather_variables(node.children)
            case "concate_and_append":
                for child in node.children:
                    text_start, ids_start = child._fork_start
                    self._append(child.text[text_start:], child.ids[ids_start:])
            case _:
                raise ValueError(f"join mode must be one of {JOIN_MODES}, got {node.mode!r}")
        for child in node.children:
            child.close()
        self.events.join([c.events.stream_id for c in node.children], node.mode)
        self.events.end("join")

    def _gather_variables(self, children: tuple[Any, ...]) -> None:
        names = list(dict.fromkeys(n for c in children for n in c._new_vars))
        for name in names:
            values = [c.variables.get(name) for c in children]
            metas = [c.meta.get(name) for c in children]
            self.set_var(name, values, metas if any(m is not None for m in metas) else None)
