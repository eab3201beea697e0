"""`@lmnb.lang.function`: a program, and how it runs (`run`, `run_batch`) and traces (`trace`).

Owns splitting a call's keyword arguments into program arguments and sampling defaults, running
the body (in the caller's thread, or a thread of its own when streaming, or a pool for batches),
turning a body exception into a `ProgramError` at the program's own line, and the constant-prefix
prefill before a batch. Knows nothing of how ops run (`interpreter`) or how a backend computes.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from lmnb.lang import calls
from lmnb.lang.backend import get_default_backend
from lmnb.lang.errors import ProgramError, site_in_traceback
from lmnb.lang.global_config import global_config
from lmnb.lang.interpreter import StreamExecutor
from lmnb.lang.sampling import sampling_overrides
from lmnb.lang.state import ProgramState

if TYPE_CHECKING:
    from lmnb.lang.tracer import ProgramGraph

MAX_BATCH_THREADS = 64


class Function:
    def __init__(self, func: Callable[..., Any], num_api_spec_tokens: int | None = None,
                 bind_arguments: Mapping[str, Any] | None = None) -> None:
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})  # fixed by `bind`
        self.signature = inspect.signature(func)
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = list(self.signature.parameters.values())[1:]  # the first is the state
        self.arg_names = [p.name for p in params if p.kind in named]
        functools.update_wrapper(self, func)

    @property
    def name(self) -> str:
        return self.func.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)

    def bind(self, **kwargs: Any) -> Function:
        """SGLang's `bind`: a new program with these arguments fixed (over the same names given
        to a run, as in SGLang); binding again adds to them."""
        unknown = [k for k in kwargs if k not in self.arg_names]
        if unknown:
            raise TypeError(f"{self.name}() has no argument {unknown[0]!r} to bind")
        return Function(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(
        self, *args: Any, stream: bool = False, backend: Any = None, use_thread: bool = True,
        **kwargs: Any,
    ) -> ProgramState:
        """Run the program once. Keyword arguments that are not the program's own are sampling
        defaults for every gen in it (`temperature`, `max_new_tokens`, `stop`, ...).

        Waits for the program to finish and raises `ProgramError` if it failed; with
        `stream=True` the body runs on a thread of its own and the state returns at once.
        `use_thread=False` (SGLang's) makes every `s += ...` wait until it has run, so the body
        never runs ahead of the model (the ops still run on the state's worker).
        """
        program_kwargs, defaults = self._split(kwargs)
        state = self._new_state(backend or get_default_backend(), defaults, not use_thread)
        if stream:
            body = threading.Thread(
                target=self._run_body, args=(state, args, program_kwargs), daemon=True
            )
            state._ex.owner = body
            body.start()
            return state
        self._run_body(state, args, program_kwargs)
        return state.sync()

    def run_batch(
        self,
        batch_kwargs: Sequence[Mapping[str, Any] | Sequence[Any]],
        *,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        backend: Any = None,
        generator_style: bool = False,
        **kwargs: Any,
    ) -> list[ProgramState] | Iterator[ProgramState]:
        """Run the program once per item (a dict of arguments, or a list of positional ones),
        concurrently. A failed item keeps its error; it raises when its state is read.

        With more than one item the constant prefix is prefilled first (unless
        `global_config.enable_precache_with_tracing` is off). `generator_style=True` returns a
        generator, as SGLang's: the items start at the first `next()`, and it yields their
        states in input order, each once it has finished."""
        _, defaults = self._split(kwargs)
        backend = backend or get_default_backend()
        if len(batch_kwargs) > 1 and global_config.enable_precache_with_tracing:
            try:
                self.prefill_constant_prefix(backend)
            except Exception as exc:  # a speed-up only: each program meets the problem itself
                warnings.warn(f"run_batch: prefilling {self.name}'s constant prefix failed "
                              f"({type(exc).__name__}: {exc}); running without it",
                              stacklevel=2)
        threads = _num_threads(num_threads, len(batch_kwargs))
        if generator_style:
            return self._iter_batch(batch_kwargs, backend, defaults, threads, progress_bar)
        with ThreadPoolExecutor(threads, thread_name_prefix=f"lmnb-{self.name}") as pool:
            futures = [
                pool.submit(self._run_item, item, backend, defaults) for item in batch_kwargs
            ]
            if progress_bar:
                _show_progress(futures, self.name)
            return [f.result() for f in futures]

    def trace(self, *args: Any, **kwargs: Any) -> ProgramGraph:
        """The program's graph, with arguments not given (nor bound) left as placeholders."""
        from lmnb.lang.tracer import trace

        return trace(self, *args, **{**kwargs, **self.bind_arguments})

    def prefill_constant_prefix(self, backend: Any) -> int:
        """Put the text every run starts with into the radix cache; returns its length."""
        nodes = self.trace().constant_prefix()
        if not nodes:
            return 0
        scratch = self._new_state(backend, None)
        for node in nodes:
            scratch += node
        scratch._ex.close()
        prompt = scratch.sync()._ex.prompt()
        calls.commit_prefix(backend, prompt)
        return len(prompt.ids) if prompt.ids else len(prompt.text)

    # ---- helpers --------------------------------------------------------------------------

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Program arguments, and the remaining keywords as the run's SamplingParams."""
        program_kwargs = {k: v for k, v in kwargs.items() if k in self.arg_names}
        sampling = {k: v for k, v in kwargs.items() if k not in self.arg_names}
        return program_kwargs, _sampling_params(**sampling_overrides(**sampling))

    def _new_state(self, backend: Any, defaults: Any, wait_each: bool = False) -> ProgramState:
        executor = StreamExecutor(backend, defaults, self.name,
                                  api_spec_tokens=self.num_api_spec_tokens or 0)
        return ProgramState(executor.start(), wait_each)

    def _run_body(self, state: ProgramState, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        try:
            state.ret_value = self.func(state, *args, **{**kwargs, **self.bind_arguments})
        except ProgramError as error:
            state._ex.fail(error)
        except Exception as exc:
            site = site_in_traceback(exc.__traceback__, self.func.__code__)
            error = ProgramError(self.name, site, exc)
            error.__cause__ = exc
            state._ex.fail(error)
        finally:
            state._ex.close()
        if global_config.verbosity >= 2 and state.error() is None:
            print(state._ex.text)  # SGLang's verbosity 2: each run's final text

    def _run_item(
        self, item: Mapping[str, Any] | Sequence[Any], backend: Any, defaults: Any
    ) -> ProgramState:
        state = self._new_state(backend, defaults)
        args, kwargs = ((), dict(item)) if isinstance(item, Mapping) else (tuple(item), {})
        self._run_body(state, args, kwargs)
        state._ex.wait_idle(recursive=True)
        return state

    def _iter_batch(
        self, items: Sequence[Any], backend: Any, defaults: Any, threads: int, progress_bar: bool
    ) -> Iterator[ProgramState]:
        with ThreadPoolExecutor(threads, thread_name_prefix=f"lmnb-{self.name}") as pool:
            futures = [pool.submit(self._run_item, item, backend, defaults) for item in items]
            bar = _progress_bar(len(futures), self.name) if progress_bar else None
            for future in futures:
                state = future.result()
                if bar is not None:
                    bar.update(1)
                yield state
            if bar is not None:
                bar.close()

    def __repr__(self) -> str:
        return f"<lmnb.lang.function {self.name}{self.signature}>"


def _sampling_params(**overrides: Any) -> Any:
    from lmnb.runtime.params import SamplingParams

    return SamplingParams().merged(**overrides)


def _num_threads(num_threads: int | str, num_items: int) -> int:
    if num_threads == "auto":  # the threads mostly wait on the runtime, which batches them
        num_threads = num_items
    return max(1, min(int(num_threads), num_items, MAX_BATCH_THREADS))


def _progress_bar(total: int, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name)


def _show_progress(futures: list[Any], name: str) -> None:
    with _progress_bar(len(futures), name) as bar:
        for _ in as_completed(futures):
            bar.update(1)
