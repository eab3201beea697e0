"""The `lmnb` command line: `lmnb bench [--quick] [--only ...]` runs the LM programs benchmark.

Owns argument dispatch only. The benchmark lives in the repository's `benchmarks/` folder (next
to the `lmnb` package in a source checkout or an editable install), which is put on `sys.path`
when the command runs; nothing here is imported by `import lmnb`.
"""

from __future__ import annotations

import argparse
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


COMMANDS = {"bench": bench}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lmnb", description="lmnb command line")
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="bench: the SGLang paper's LM programs on lmnb and baselines "
                             "(`lmnb bench --help` for its options)")
    args, rest = parser.parse_known_args(argv[:1])
    return COMMANDS[args.command](argv[1:] + rest)


if __name__ == "__main__":
    sys.exit(main())
