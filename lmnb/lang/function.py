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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from lmnb.lang import calls
from lmnb.lang.backend import get_default_backend
from lmnb.lang.errors import ProgramError, site_in_traceback
from lmnb.lang.interpreter import StreamExecutor
from lmnb.lang.sampling import sampling_overrides
from lmnb.lang.state import ProgramState

if TYPE_CHECKING:
    from lmnb.lang.tracer import ProgramGraph

MAX_BATCH_THREADS = 64


class Function:
    def __init__(self, func: Callable[..., Any], num_api_spec_tokens: int | None = None) -> None:
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
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

    def run(
        self, *args: Any, stream: bool = False, backend: Any = None, **kwargs: Any
    ) -> ProgramState:
        """Run the program once. Keyword arguments that are not the program's own are sampling
        defaults for every gen in it (`temperature`, `max_new_tokens`, `stop`, ...).

        Waits for the program to finish and raises `ProgramError` if it failed; with
        `stream=True` the body runs on a thread of its own and the state returns at once.
        """
        program_kwargs, defaults = self._split(kwargs)
        state = self._new_state(backend or get_default_backend(), defaults)
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
    ) -> list[ProgramState]:
        """Run the program once per item (a dict of arguments, or a list of positional ones),
        concurrently. A failed item keeps its error; it raises when its state is read."""
        if generator_style:
            raise NotImplementedError("run_batch(generator_style=True) is not supported")
        _, defaults = self._split(kwargs)
        backend = backend or get_default_backend()
        if len(batch_kwargs) > 1:
            self.prefill_constant_prefix(backend)
        threads = _num_threads(num_threads, len(batch_kwargs))
        with ThreadPoolExecutor(threads, thread_name_prefix=f"lmnb-{self.name}") as pool:
            futures = [
                pool.submit(self._run_item, item, backend, defaults) for item in batch_kwargs
            ]
            if progress_bar:
                _show_progress(futures, self.name)
            return [f.result() for f in futures]

    def trace(self, *args: Any, **kwargs: Any) -> ProgramGraph:
        """The program's graph, with arguments not given left as placeholders."""
        from lmnb.lang.tracer import trace

        return trace(self, *args, **kwargs)

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

    def _new_state(self, backend: Any, defaults: Any) -> ProgramState:
        executor = StreamExecutor(backend, defaults, self.name,
                                  api_spec_tokens=self.num_api_spec_tokens or 0)
        return ProgramState(executor.start())

    def _run_body(self, state: ProgramState, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        try:
            state.ret_value = self.func(state, *args, **kwargs)
        except ProgramError as error:
            state._ex.fail(error)
        except Exception as exc:
            site = site_in_traceback(exc.__traceback__, self.func.__code__)
            error = ProgramError(self.name, site, exc)
            error.__cause__ = exc
            state._ex.fail(error)
        finally:
            state._ex.close()

    def _run_item(
        self, item: Mapping[str, Any] | Sequence[Any], backend: Any, defaults: Any
    ) -> ProgramState:
        state = self._new_state(backend, defaults)
        args, kwargs = ((), dict(item)) if isinstance(item, Mapping) else (tuple(item), {})
        self._run_body(state, args, kwargs)
        state._ex.wait_idle(recursive=True)
        return state

    def __repr__(self) -> str:
        return f"<lmnb.lang.function {self.name}{self.signature}>"


def _sampling_params(**overrides: Any) -> Any:
    from lmnb.runtime.params import SamplingParams

    return SamplingParams().merged(**overrides)


def _num_threads(num_threads: int | str, num_items: int) -> int:
    if num_threads == "auto":  # the threads mostly wait on the runtime, which batches them
        num_threads = num_items
    return max(1, min(int(num_threads), num_items, MAX_BATCH_THREADS))


def _show_progress(futures: list[Any], name: str) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=len(futures), desc=name) as bar:
        for _ in as_completed(futures):
            bar.update(1)
