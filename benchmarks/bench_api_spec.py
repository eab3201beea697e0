"""API speculative execution (the SGLang paper's third technique): API calls and billed prompt
tokens of a multi-field extraction through a chat API, with and without speculation.

Workload (SGLang's example of the technique): a one-shot character sheet, then one assistant
turn with three fields separated by constant text, for several kinds of character:

    s += sgl.user("Construct a character within the following format:")
    s += sgl.assistant("Name: Steve Jobs.\\nBirthday: February 24, 1955.\\nJob: Apple CEO.\\n")
    s += sgl.user(f"Please generate new Name, Birthday and Job for {kind}.\\n")
    s += sgl.assistant("Name:" + sgl.gen("name", stop="\\n") + "\\nBirthday:"
                       + sgl.gen("birthday", stop="\\n") + "\\nJob:" + sgl.gen("job", stop="\\n"))

System: `lmnb serve` started in this process on 127.0.0.1 (a free port) in front of an
`lmnb.runtime.Engine()` on the default model, reached through the `OpenAI` backend (the real
`openai` client). Each mode runs every character (run_batch), greedy, after flushing the
server's cache:
  without   @function: one chat call per gen; a gen after text inside the assistant turn
            continues that partial message (`continue_final_message`, which lmnb serve takes)
  with      @function(num_api_spec_tokens=N): the turn's first gen asks once for N tokens,
            the later gens are cut from that output when it continues with the program's text
            (a mismatch falls back to a call)
Reported per mode: API calls, billed prompt and completion tokens, tokens the server reported
cached, wall time; with speculation, the gens served, the fallbacks and the backend's estimate
of what the skipped calls would have billed. The fields must be the same in both modes
(greedy on the same server) and every one non-empty. Target: >= 2.5x fewer API calls.

Prints a table (Markdown with --markdown) and writes benchmarks/results/api_spec.json.

    python benchmarks/bench_api_spec.py [--spec-tokens N] [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, when run as a script

from common import log, machine_info, markdown_grid, print_grid, write_json  # noqa: E402

KINDS = ["a wizard", "a detective", "a pirate captain", "a chef", "an astronaut",
         "a painter", "a knight", "a scientist", "a farmer", "a musician", "a teacher",
         "a pilot"]
FIELDS = ("name", "birthday", "job")
TARGET_CALL_RATIO = 2.5


def character_program(spec_tokens: int) -> Any:
    import lmnb as sgl

    @sgl.function(num_api_spec_tokens=spec_tokens or None)
    def character(s, kind):
        s += sgl.user("Construct a character within the following format:")
        s += sgl.assistant("Name: Steve Jobs.\nBirthday: February 24, 1955.\nJob: Apple CEO.\n")
        s += sgl.user(f"Please generate new Name, Birthday and Job for {kind}.\n")
        s += sgl.assistant("Name:" + sgl.gen("name", stop="\n", max_tokens=24)
                           + "\nBirthday:" + sgl.gen("birthday", stop="\n", max_tokens=24)
                           + "\nJob:" + sgl.gen("job", stop="\n", max_tokens=24))

    return character


def run_mode(backend: Any, engine: Any, kinds: list[str], spec_tokens: int) -> dict[str, Any]:
    engine.flush_cache()
    backend.token_usage.reset()
    program = character_program(spec_tokens)
    started = time.perf_counter()
    states = program.run_batch([{"kind": k} for k in kinds], backend=backend, num_threads=4)
    fields = [{f: s[f] for f in FIELDS} for s in states]
    seconds = time.perf_counter() - started
    spec = [s.get_meta_info(f).get("api_spec") or {} for s in states for f in FIELDS]
    return {"spec_tokens": spec_tokens, "seconds": seconds, "fields": fields,
            **backend.token_usage.as_dict(),
            "served": sum(bool(m.get("served")) for m in spec),
            "fallbacks": sum(m.get("call") == "fallback" for m in spec)}


def report(without: dict[str, Any], with_spec: dict[str, Any], kinds: list[str],
           markdown: bool) -> dict[str, Any]:
    same = [a == b for a, b in zip(without["fields"], with_spec["fields"])]
    filled = all(v.strip() for run in (without, with_spec) for f in run["fields"]
                 for v in f.values())
    ratio = without["num_api_calls"] / max(with_spec["num_api_calls"], 1)
    prompt_ratio = without["prompt_tokens"] / max(with_spec["prompt_tokens"], 1)
    header = ["mode", "API calls", "billed prompt tok", "completion tok", "cached tok",
              "gens served", "fallbacks", "wall s"]
    lines = [[f"{name}", str(r["num_api_calls"]), str(r["prompt_tokens"]),
              str(r["completion_tokens"]), str(r["cached_tokens"]), str(r["served"]),
              str(r["fallbacks"]), f"{r['seconds']:.1f}"]
             for name, r in (("without speculation", without),
                             (f"with (num_api_spec_tokens={with_spec['spec_tokens']})",
                              with_spec))]
    lines.append(["ratio (without / with)", f"{ratio:.2f}x", f"{prompt_ratio:.2f}x", "", "",
                  "", "", ""])
    caption = (f"{len(kinds)} characters x {len(FIELDS)} fields; same fields in "
               f"{sum(same)}/{len(same)}; all non-empty: {filled}; calls target >= "
               f"{TARGET_CALL_RATIO}x: {'PASS' if ratio >= TARGET_CALL_RATIO else 'FAIL'}")
    print_grid("API speculative execution through lmnb serve", header, lines, caption)
    if markdown:
        print(markdown_grid(header, lines))
        print(caption)
    return {"call_ratio": ratio, "prompt_token_ratio": prompt_ratio,
            "same_fields": sum(same), "characters": len(same), "all_filled": filled,
            "target_call_ratio": TARGET_CALL_RATIO, "passed": ratio >= TARGET_CALL_RATIO}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="4 characters")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import lmnb as sgl
    from lmnb.runtime import Engine
    from lmnb.server import start_server

    kinds = KINDS[:4] if args.quick else KINDS
    engine = Engine()
    server = start_server(engine)
    try:
        backend = sgl.OpenAI("default", base_url=server.url + "/v1")
        log(f"lmnb serve at {server.url}; {engine.describe().get('dtype', '')}")
        without = run_mode(backend, engine, kinds, 0)
        log(f"  without speculation: {without['num_api_calls']} calls")
        with_spec = run_mode(backend, engine, kinds, args.spec_tokens)
        log(f"  with speculation: {with_spec['num_api_calls']} calls")
        summary = report(without, with_spec, kinds, args.markdown)
        info = machine_info(engine=engine.describe())
    finally:
        server.stop()
        engine.shutdown()
    path = write_json("api_spec" + ("_quick" if args.quick else ""),
                      {"machine": info, "kinds": kinds, "without": without,
                       "with": with_spec, **summary})
    log(f"wrote {path} ({info['cpu_model']})")


if __name__ == "__main__":
    main()
