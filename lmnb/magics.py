"""The notebook magics: `%%lmprogram` (run or define a program from a cell) and `%lmnb`.

Owns parsing the magic lines, compiling a cell body into a real `lmnb.lang.function` whose frames
point into the cell (so tracebacks show the cell's own lines), and controlling the default
backend (`%lmnb start|connect|stop|status|cache|flush|policy`; `connect` makes it a
`RuntimeEndpoint` on a remote server, so cells and views run on and draw that runtime).
Widgets are imported only when a view is shown, and only once the program has made its
first call (a program that fails before it shows its error alone). A failure shows the short
traceback of `lmnb.tracebacks` (`%lmnb debug` toggles IPython's full one); Ctrl-C on a waiting
cell cancels its programs and shows one line. Knows nothing of how programs run (the language
layer) or how the runtime computes.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import re
import shlex
import sys
import time
import traceback
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Bool, Int, Unicode, default

import lmnb as lm
from lmnb import tracebacks
from lmnb.lang.errors import presentation

PRIMITIVES = (
    "gen", "gen_int", "gen_string", "select", "system", "user", "assistant",
    "system_begin", "system_end", "user_begin", "user_end", "assistant_begin", "assistant_end",
)
_SIGNATURE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)(.*)$")
VIEWS = ("full", "text", "none")
FIRST_CALL_WAIT = 1.0  # seconds a cell that returns at once waits to see the program's start
CALL_OPS = ("gen", "select", "fork")  # the ops that call the model


class CellScope(dict):
    """A cell's globals: the notebook's variables first, then `lm` and its primitives.

    Names a program assigns with `global` land here, not in the notebook (the cell is a program,
    not notebook code); lookups fall through to the live user namespace at call time.
    """

    def __init__(self, user_ns: dict[str, Any]) -> None:
        super().__init__(__builtins__=user_ns.get("__builtins__", __builtins__))
        self.user_ns = user_ns

    def __missing__(self, name: str) -> Any:
        if name in self.user_ns:
            return self.user_ns[name]
        if name == "lm":
            return lm
        if name in PRIMITIVES:
            return getattr(lm, name)
        raise KeyError(name)


def _program_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%%lmprogram", add_help=False, exit_on_error=False)
    p.add_argument("--out", default=None)
    p.add_argument("--wait", action="store_true")
    p.add_argument("--batch", default=None, metavar="VAR")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--view", choices=VIEWS, default="full")
    return p


def parse_program_line(line: str) -> tuple[str | None, str, argparse.Namespace]:
    """(name or None, parameter text, options) from `qa(question, n=3) --out x`."""
    name, params, rest = None, "", line
    m = _SIGNATURE.match(line)
    if m:
        name, params, rest = m.group(1), m.group(2).strip(), m.group(3)
    elif line.strip() and not line.strip().startswith("--"):
        raise UsageError(f"%%lmprogram: expected `name(params)` or options, got {line.strip()!r}")
    try:
        opts, extra = _program_parser().parse_known_args(shlex.split(rest))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise UsageError(f"%%lmprogram: {exc}") from None
    if extra:
        raise UsageError(f"%%lmprogram: unknown options {extra}")
    return name, params, opts


def compile_program(
    name: str, params: str, body: str, filename: str, scope: dict[str, Any],
    first_line: int = 1,
) -> lm.Function:
    """A `lm.function` whose body is the cell: line numbers and filename are the cell's own
    (the body's first line is line `first_line`: 2 under the `%%lmprogram` line)."""
    head = ast.parse(f"def {name}(s{', ' if params else ''}{params}):\n    pass\n")
    func_def = head.body[0]
    cell = ast.parse("\n" * (first_line - 1) + body, filename=filename)
    func_def.body = cell.body or [ast.Pass()]
    for node in ast.walk(func_def.args):
        if hasattr(node, "lineno"):
            node.lineno = node.end_lineno = 1
    func_def.lineno = func_def.end_lineno = 1
    ast.fix_missing_locations(head)
    exec(compile(head, filename, "exec"), scope)  # noqa: S102 - the cell is the user's code
    return lm.function(scope[name])


@magics_class
class LmnbMagics(Magics):
    """`%%lmprogram` and `%lmnb`; defaults are traitlets options (`%config LmnbMagics.model`)."""

    model = Unicode(None, allow_none=True,
                    help="model for `%lmnb start` (the default model if None)").tag(config=True)
    policy = Unicode("lpm", help="scheduling policy for `%lmnb start`").tag(config=True)
    max_tokens_in_cache = Int(None, allow_none=True,
                              help="KV pool size for `%lmnb start`").tag(config=True)
    debug = Bool(help="show lmnb's own frames in tracebacks (`%lmnb debug` toggles; "
                 "default from LMNB_DEBUG)").tag(config=True)

    @default("debug")
    def _debug_default(self) -> bool:
        return os.environ.get("LMNB_DEBUG", "").lower() not in ("", "0", "false", "no")

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.started: lm.Runtime | None = None  # the runtime `%lmnb start` made, if any
        self.connected: lm.RuntimeEndpoint | None = None  # the endpoint of `%lmnb connect`
        # views of cells that returned while their programs ran: (view, display handle, states)
        self.unsettled: list[tuple[Any, Any, list[Any]]] = []
        if shell is not None:
            shell.events.register("post_execute", self.settle_views)

    # ---- %%lmprogram ----------------------------------------------------------------------

    @cell_magic
    def lmprogram(self, line: str, cell: str) -> Any:
        """Run the cell as a program now (`s` is the state), or define `name(params)`."""
        name, params, opts = parse_program_line(line)
        # the cell as the user sees it (the magic's line first), labelled `Cell In[N]`
        source = f"%%lmprogram {line}".rstrip() + "\n" + cell
        filename = self.shell.compile.cache(source, self._cell_number())
        try:
            ast.parse("\n" + cell, filename=filename)  # line 1 is the magic's
        except SyntaxError as exc:  # shown as IPython shows a cell's, without the magic's frames
            raise CellSyntaxError(exc, self.shell, self.debug) from None
        scope = CellScope(self.shell.user_ns)
        if name is not None:
            if opts.out or opts.wait or opts.batch or opts.temperature is not None or \
                    opts.max_tokens:
                raise UsageError("%%lmprogram name(...) only defines a program; pass --out/--wait/"
                                 "--batch/--temperature/--max-tokens when you run it")
            self.shell.user_ns[name] = compile_program(name, params, cell, filename, scope, 2)
            return None
        items = self._batch_items(opts.batch) if opts.batch else [{}]
        params = ", ".join(items[0])
        program = compile_program("lmprogram_cell", params, cell, filename, scope, 2)
        return self._run(program, items, opts)

    def _batch_items(self, var: str) -> list[dict[str, Any]]:
        """The argument dicts in notebook variable `var`; every one names the same arguments."""
        if var not in self.shell.user_ns:
            raise UsageError(f"%%lmprogram --batch: no variable {var!r} in the notebook")
        items = self.shell.user_ns[var]
        if not isinstance(items, list | tuple) or not items or \
                not all(isinstance(i, dict) for i in items):
            raise UsageError(f"%%lmprogram --batch: {var!r} must be a non-empty list of dicts")
        names = list(items[0])
        bad = [i for i, item in enumerate(items) if sorted(item) != sorted(names)]
        if bad or not all(n.isidentifier() for n in names):
            raise UsageError(f"%%lmprogram --batch: every dict in {var!r} must have the same "
                             f"identifier keys as the first ({names}); item {bad[:1]} differs")
        return [dict(i) for i in items]

    def _run(self, program: lm.Function, items: list[dict[str, Any]],
             opts: argparse.Namespace) -> Any:
        """Start one run per item (one item, no arguments, without --batch): each streams on
        its own threads, so the runtime batches their requests, as `run_batch` does."""
        kwargs: dict[str, Any] = {}
        if opts.temperature is not None:
            kwargs["temperature"] = opts.temperature
        if opts.max_tokens is not None:
            kwargs["max_tokens"] = opts.max_tokens
        backend = lm.get_default_backend()
        states = [program.run(stream=True, backend=backend, **item, **kwargs) for item in items]
        if opts.out:
            self.shell.user_ns[opts.out] = states if opts.batch else states[0]
        started = lambda: any(made_a_call(state) for state in states)  # noqa: E731
        self._wait(states, started, None if opts.wait else FIRST_CALL_WAIT)
        if not started() and all(state.finished() for state in states):
            for state in states:  # failed before its first call: the error alone, no view
                state.sync()
        view = self._view(opts.view, backend, states)
        shown = display(view, display_id=True) if view is not None else None
        if view is not None and not opts.wait:
            self.unsettled.append((view, shown, states))
        if opts.wait:
            self._wait(states)
            if view is not None:
                view.refresh()
                shown.update(view)  # the saved output's static picture is the final one
            for state in states:
                state.sync()  # raises ProgramError (its __cause__ has the cell's frames)
        return None

    def settle_views(self) -> None:
        """After each cell (on the kernel's thread): a view whose programs have ended since
        gets its final picture into its output's static HTML too (a saved notebook shows the
        moment the program ended, not the moment its cell returned)."""
        for entry in list(self.unsettled):
            view, shown, states = entry
            if all(state.finished() or state.progress().done for state in states):
                view.refresh()
                shown.update(view)
                self.unsettled.remove(entry)

    def _wait(self, states: list[Any], until: Any = None, timeout: float | None = None) -> None:
        """`wait_or_cancel`, with Ctrl-C shown as one line (`CellInterrupted`)."""
        try:
            wait_or_cancel(states, until=until, timeout=timeout)
        except KeyboardInterrupt as exc:
            raise CellInterrupted(str(exc) or "lmnb: cancelled", debug=self.debug) from exc

    def _view(self, kind: str, backend: Any, states: list[Any]) -> Any:
        if kind == "none":
            return None
        from lmnb.widgets import Dashboard, TokenStreamView

        if kind == "full":
            return Dashboard(backend, states=states)
        return TokenStreamView(states)

    # ---- %lmnb ----------------------------------------------------------------------------

    @line_magic
    def lmnb(self, line: str) -> Any:
        """`%lmnb start [--model M] [--policy P] [--max-tokens-in-cache N]|connect URL
        [--api-key K]|stop|status|cache|monitor|flush|policy NAME|debug [on|off]`."""
        words = shlex.split(line)
        commands = ", ".join(COMMANDS)
        if not words:
            raise UsageError(f"%lmnb: give a command: {commands}")
        command, args = words[0], words[1:]
        if command not in COMMANDS:
            close = difflib.get_close_matches(command, COMMANDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"%lmnb: unknown command {command!r}{hint} (commands: {commands})")
        return getattr(self, f"_cmd_{command}")(args)

    def _cmd_start(self, args: list[str]) -> None:
        p = argparse.ArgumentParser(prog="%lmnb start", add_help=False, exit_on_error=False)
        p.add_argument("--model", default=self.model)
        p.add_argument("--policy", default=self.policy)
        p.add_argument("--max-tokens-in-cache", type=int, default=self.max_tokens_in_cache)
        try:
            opts = p.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise UsageError(f"%lmnb start: {exc}") from None
        self._cmd_stop([])
        self.started = lm.Runtime(opts.model, policy=opts.policy,
                                  max_tokens_in_cache=opts.max_tokens_in_cache)
        lm.set_default_backend(self.started)
        print(f"lmnb: started {self.started.engine.model_name} ({opts.policy})")

    def _cmd_connect(self, args: list[str]) -> None:
        """Make a remote runtime (`lmnb serve`, an SGLang server or router) the default."""
        p = argparse.ArgumentParser(prog="%lmnb connect", add_help=False, exit_on_error=False)
        p.add_argument("url")
        p.add_argument("--api-key", default=None)
        try:
            opts = p.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise UsageError(f"%lmnb connect URL [--api-key KEY]: {exc}") from None
        endpoint = lm.RuntimeEndpoint(opts.url, api_key=opts.api_key)
        self._cmd_stop([])
        self.connected = endpoint
        lm.set_default_backend(endpoint)
        endpoint.tokenizer  # noqa: B018 - find the mode now, to say it
        print(f"lmnb: connected to {endpoint.base_url} ({endpoint.get_model_name()}; "
              f"{endpoint.tokenizer_reason})")

    def _cmd_stop(self, args: list[str]) -> None:
        """Stops the runtime `%lmnb start` made, or disconnects from the one `%lmnb connect`
        chose; a runtime set elsewhere is only unset."""
        if self.started is not None:
            self.started.shutdown()
            self.started = None
        if self.connected is not None:
            # its HTTP client is not closed: views still on screen may go on reading it
            print(f"lmnb: disconnected from {self.connected.base_url}")
            self.connected = None
        lm.set_default_backend(None)

    def _cmd_status(self, args: list[str]) -> Status:
        """The status as a dict that IPython shows as its lines (shown once, as the result)."""
        return Status(runtime_status(lm.get_default_backend()))

    def _cmd_debug(self, args: list[str]) -> None:
        """`%lmnb debug [on|off]`: show lmnb's own frames in tracebacks (no argument toggles)."""
        if args not in ([], ["on"], ["off"]):
            raise UsageError("%lmnb debug [on|off]")
        self.debug = (not self.debug) if not args else args[0] == "on"
        print("lmnb: debug " + ("on: tracebacks show lmnb's own frames" if self.debug else
                                "off: tracebacks end at your own lines"))

    def _cmd_cache(self, args: list[str]) -> Any:
        from lmnb.widgets import RadixTreeView

        return RadixTreeView(lm.get_default_backend())

    def _cmd_monitor(self, args: list[str]) -> Any:
        """The runtime's tree and statistics followed live (every other view keeps the moment
        its cell ran), until the view is closed or its button stops it."""
        from lmnb.widgets import Dashboard

        return Dashboard(lm.get_default_backend(), live=True)

    def _cmd_flush(self, args: list[str]) -> None:
        lm.get_default_backend().flush_cache()
        print("lmnb: radix cache flushed")

    def _cmd_policy(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError("%lmnb policy NAME (lpm, dfs-weight, fcfs)")
        if isinstance(lm.get_default_backend(), lm.RuntimeEndpoint):
            raise UsageError("%lmnb policy: a remote runtime's policy is the server's to set "
                             "(lmnb serve --policy NAME)")
        try:
            lm.get_default_backend().engine.set_policy(args[0])
        except (ValueError, KeyError) as exc:
            raise UsageError(f"%lmnb policy: {exc}") from None
        print(f"lmnb: policy {args[0]}")

    # ---- how errors show ------------------------------------------------------------------

    def _cell_number(self) -> int:
        """The number IPython gave the cell running this magic: that of the nearest calling
        frame in a cell (the execution count has already moved on when history is stored)."""
        frame = sys._getframe(1)
        while frame is not None:
            named = self.shell.compile.format_code_name(frame.f_code.co_filename)
            if named and named[1].startswith("In[") and named[1][3:-1].isdigit():
                return int(named[1][3:-1])
            frame = frame.f_back
        return self.shell.execution_count

    def source_label(self, filename: str) -> str | None:
        """`Cell In[10]` for a cell's file, as IPython labels it; None for a real file."""
        named = self.shell.compile.format_code_name(filename)
        return f"{named[0]} {named[1]}" if named else None

    def render_traceback(self, error: BaseException) -> list[str]:
        """IPython's structured traceback of a failed program: the short one, or with
        `debug` IPython's own (every frame, the chained causes)."""
        if self.debug:
            return self.shell.InteractiveTB.structured_traceback(
                type(error), error, error.__traceback__)
        return tracebacks.render(error, self.source_label)


class Status(dict):
    """`%lmnb status`: plain data, shown as `key: value` lines."""

    def __str__(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.items())

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))


class CellSyntaxError(Exception):
    """A `%%lmprogram` cell that does not parse: shown as IPython shows a cell's SyntaxError
    (its line and caret), not through the magic's frames; `error` is the SyntaxError."""

    def __init__(self, error: SyntaxError, shell: Any, debug: bool = False) -> None:
        super().__init__(f"{error.msg} ({error.filename}, line {error.lineno})")
        self.error, self.shell, self.debug = error, shell, debug

    @property
    def _render_traceback_(self) -> Any:
        if self.debug:
            raise AttributeError("_render_traceback_")
        return lambda: self.shell.SyntaxTB.structured_traceback(
            type(self.error), self.error, [])


class CellInterrupted(KeyboardInterrupt):
    """Ctrl-C on a waiting cell, after its programs were cancelled: still a KeyboardInterrupt
    (so Run All stops), shown as its one line unless `debug`."""

    def __init__(self, text: str, debug: bool = False) -> None:
        super().__init__(text)
        self.debug = debug

    @property
    def _render_traceback_(self) -> Any:
        if self.debug:
            raise AttributeError("_render_traceback_")  # IPython's full traceback
        return lambda: [str(self)]


def made_a_call(state: Any) -> bool:
    """Whether the program (or a fork of it) has started a model call."""
    return any(e.data.get("op") in CALL_OPS for e in state.event_log.events("start"))


def runtime_status(backend: Any) -> dict[str, Any]:
    """Model, dtype, device, pool use and hit rate of a runtime, as plain data; for a remote
    one, where it is connected and what its `get_server_info()` tells."""
    if isinstance(backend, lm.RuntimeEndpoint):
        return remote_status(backend)
    return engine_status(backend.engine.describe(), backend.engine.stats())


def remote_status(endpoint: Any) -> dict[str, Any]:
    info = endpoint.get_server_info()
    status = {"connected": endpoint.base_url, "model": endpoint.get_model_name(),
              "mode": endpoint.tokenizer_reason or "(decided at the first call)"}
    if isinstance(info.get("engine"), dict) and isinstance(info.get("stats"), dict):
        return {**status, **engine_status(info["engine"], info["stats"])}
    keys = ("version", "context_length", "max_total_num_tokens", "schedule_policy")
    return {**status, **{k: info[k] for k in keys if k in info}}  # an SGLang server


def engine_status(info: dict[str, Any], st: dict[str, Any]) -> dict[str, Any]:
    """An engine's `describe()` and `stats()` in words (the weight format and the model
    runner where describe() reports them)."""
    return {
        "model": info["model"],
        "device": info["device"] + next((f" ({info[k]})" for k in ("cpu", "gpu") if k in info),
                                        ""),
        "dtype": f"{info['dtype']} ({info['dtype_reason']})",
        **{key: described(info, key) for key in ("weights", "runner") if key in info},
        "exact": ("yes: batch-invariant kernels, cache hits never change an answer"
                  if info["deterministic"] else "no: " + info["kernels"]),
        "kernels": f"linear {info['linear']}; attention {info['attention']}"
                   + (f"; CUDA graphs {info['cuda_graphs']}" if "gpu" in info else ""),
        "policy": st["policy"],
        "pool": f"{st['capacity'] - st['free_slots']}/{st['capacity']} slots used "
                f"({st['evictable_slots']} evictable, {st['protected_slots']} in use)",
        "hit_rate": f"{st['hit_rate']:.1%} ({st['cached_tokens']}/{st['prompt_tokens']} "
                    "prompt tokens cached)",
        "requests": st["num_requests"],
    }


def described(info: dict[str, Any], key: str) -> str:
    """describe()'s `key`, with its `<key>_reason` where it gives one."""
    reason = info.get(f"{key}_reason")
    return f"{info[key]}" + (f" ({reason})" if reason else "")


def wait_or_cancel(states: list[Any], poll: float = 0.05, until: Any = None,
                   timeout: float | None = None) -> None:
    """Wait for the programs (or until `until()` is true, or `timeout` seconds); on Ctrl-C (the
    stop button) cancel them, so their requests are aborted and their KV slots freed while
    the runtime keeps serving, then raise KeyboardInterrupt with a line that says so.

    Polls with short sleeps rather than blocking on a lock, so the interrupt lands at once.
    """
    end = None if timeout is None else time.monotonic() + timeout
    try:
        while not all(state.finished() for state in states):
            if (until is not None and until()) or (end is not None and time.monotonic() > end):
                return
            time.sleep(poll)
    except KeyboardInterrupt:
        aborted = sum(state.cancel() for state in states)
        deadline = time.monotonic() + 60
        while not all(state.finished() for state in states) and time.monotonic() < deadline:
            time.sleep(poll)
        raise KeyboardInterrupt(f"lmnb: cancelled; {aborted} running request(s) aborted, "
                                "their KV slots freed") from None


def format_exception(exc: BaseException) -> str:
    """The text of a traceback, as a view shows a background program's error."""
    return "".join(traceback.format_exception(exc))


COMMANDS = tuple(name[len("_cmd_"):] for name in vars(LmnbMagics) if name.startswith("_cmd_"))


def load_ipython_extension(ip: Any) -> None:
    magics = LmnbMagics(shell=ip)
    ip.register_magics(magics)
    presentation.source_label = magics.source_label  # a failed program's site: `Cell In[10]`
    presentation.render_traceback = magics.render_traceback


__all__ = ["LmnbMagics", "load_ipython_extension"]
