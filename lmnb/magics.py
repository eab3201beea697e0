"""The notebook magics: `%%lmprogram` (run or define a program from a cell) and `%lmnb`.

Owns parsing the magic lines, compiling a cell body into a real `lmnb.lang.function` whose frames
point into the cell (so tracebacks show the cell's own lines), and controlling the default
backend (`%lmnb start|connect|stop|status|cache|flush|policy`; `connect` makes it a
`RuntimeEndpoint` on a remote server, so cells and views run on and draw that runtime).
Widgets are imported only when a view is shown. Knows nothing of how programs run (the
language layer) or how the runtime computes.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import time
import traceback
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Int, Unicode

import lmnb as lm

PRIMITIVES = (
    "gen", "gen_int", "gen_string", "select", "system", "user", "assistant",
    "system_begin", "system_end", "user_begin", "user_end", "assistant_begin", "assistant_end",
)
_SIGNATURE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)(.*)$")
VIEWS = ("full", "text", "none")


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
    name: str, params: str, body: str, filename: str, scope: dict[str, Any]
) -> lm.Function:
    """A `lm.function` whose body is the cell: line numbers and filename are the cell's own."""
    head = ast.parse(f"def {name}(s{', ' if params else ''}{params}):\n    pass\n")
    func_def = head.body[0]
    cell = ast.parse(body, filename=filename)
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

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.started: lm.Runtime | None = None  # the runtime `%lmnb start` made, if any
        self.connected: lm.RuntimeEndpoint | None = None  # the endpoint of `%lmnb connect`

    # ---- %%lmprogram ----------------------------------------------------------------------

    @cell_magic
    def lmprogram(self, line: str, cell: str) -> Any:
        """Run the cell as a program now (`s` is the state), or define `name(params)`."""
        name, params, opts = parse_program_line(line)
        filename = self.shell.compile.cache(cell)
        scope = CellScope(self.shell.user_ns)
        if name is not None:
            if opts.out or opts.wait or opts.batch or opts.temperature is not None or \
                    opts.max_tokens:
                raise UsageError("%%lmprogram name(...) only defines a program; pass --out/--wait/"
                                 "--batch/--temperature/--max-tokens when you run it")
            self.shell.user_ns[name] = compile_program(name, params, cell, filename, scope)
            return None
        items = self._batch_items(opts.batch) if opts.batch else [{}]
        params = ", ".join(items[0])
        program = compile_program("lmprogram_cell", params, cell, filename, scope)
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
        view = self._view(opts.view, backend, states)
        shown = display(view, display_id=True) if view is not None else None
        if opts.wait:
            wait_or_cancel(states)
            if view is not None:
                view.refresh()
                shown.update(view)  # the saved output's static picture is the final one
            for state in states:
                state.sync()  # raises ProgramError (its __cause__ has the cell's frames)
        return None

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
        [--api-key K]|stop|status|cache|monitor|flush|policy NAME`."""
        words = shlex.split(line)
        if not words:
            raise UsageError("%lmnb: give a command: start, connect, stop, status, cache, "
                             "monitor, flush, policy")
        command, args = words[0], words[1:]
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            raise UsageError(f"%lmnb: unknown command {command!r}")
        return handler(args)

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

    def _cmd_status(self, args: list[str]) -> dict[str, Any]:
        status = runtime_status(lm.get_default_backend())
        print("\n".join(f"{k}: {v}" for k, v in status.items()))
        return status

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
        "device": info["device"] + (f" ({info['cpu']})" if "cpu" in info else ""),
        "dtype": f"{info['dtype']} ({info['dtype_reason']})",
        **{key: described(info, key) for key in ("weights", "runner") if key in info},
        "exact": ("yes: batch-invariant kernels, cache hits never change an answer"
                  if info["deterministic"] else "no: " + info["kernels"]),
        "kernels": f"linear {info['linear']}; attention {info['attention']}",
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


def wait_or_cancel(states: list[Any], poll: float = 0.05) -> None:
    """Wait for the programs; on Ctrl-C (the stop button) cancel them, so their requests are
    aborted and their KV slots freed while the runtime keeps serving, then re-raise.

    Polls with short sleeps rather than blocking on a lock, so the interrupt lands at once.
    """
    try:
        while not all(state.finished() for state in states):
            time.sleep(poll)
    except KeyboardInterrupt:
        aborted = sum(state.cancel() for state in states)
        deadline = time.monotonic() + 60
        while not all(state.finished() for state in states) and time.monotonic() < deadline:
            time.sleep(poll)
        print(f"lmnb: cancelled; {aborted} running request(s) aborted, their KV slots freed")
        raise


def format_exception(exc: BaseException) -> str:
    """The text of a traceback, as a view shows a background program's error."""
    return "".join(traceback.format_exception(exc))


def load_ipython_extension(ip: Any) -> None:
    ip.register_magics(LmnbMagics)


__all__ = ["LmnbMagics", "load_ipython_extension"]
