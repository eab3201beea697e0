"""The `lmnb` command line: `lmnb bench [--quick] [--only ...]` runs the LM programs benchmark;
`lmnb serve --model M --port 30000 [--api-key K]` serves a model over HTTP (`lmnb.server`).

Owns argument dispatch only. The benchmark lives in the repository's `benchmarks/` folder (next
to the `lmnb` package in a source checkout or an editable install), which is put on `sys.path`
when the command runs; nothing here is imported by `import lmnb`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def bench(argv: list[str]) -> int:
    """Run `benchmarks/bench_programs.py` with `argv` (its own options)."""
    if not (BENCHMARKS / "bench_programs.py").is_file():
        print(f"lmnb bench needs a source checkout: {BENCHMARKS} not found", file=sys.stderr)
        return 2
    sys.path.insert(0, str(BENCHMARKS))
    import bench_programs

    bench_programs.main(argv)
    return 0


def serve(argv: list[str]) -> int:
    """Serve one engine over HTTP (SGLang-native and OpenAI-compatible) until interrupted."""
    parser = argparse.ArgumentParser(prog="lmnb serve", description=serve.__doc__)
    parser.add_argument("--model", default=None,
                        help="HF folder, .gguf file or name (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=30000, help="port (0: any free port)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every route but /health")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: auto)")
    parser.add_argument("--max-tokens-in-cache", type=int, default=None,
                        help="KV pool size in tokens")
    parser.add_argument("--policy", default="lpm", help="lpm, dfs-weight or fcfs")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    args = parser.parse_args(argv)
    from lmnb.server import serve as run_server

    with contextlib.suppress(KeyboardInterrupt):
        run_server(args.model, host=args.host, port=args.port, api_key=args.api_key,
                   log_level=args.log_level, dtype=args.dtype,
                   max_tokens_in_cache=args.max_tokens_in_cache, policy=args.policy)
    return 0


COMMANDS = {"bench": bench, "serve": serve}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lmnb", description="lmnb command line")
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="bench: the SGLang paper's LM programs on lmnb and baselines; "
                             "serve: an HTTP server (`lmnb <command> --help` for options)")
    args, rest = parser.parse_known_args(argv[:1])
    return COMMANDS[args.command](argv[1:] + rest)


if __name__ == "__main__":
    sys.exit(main())
