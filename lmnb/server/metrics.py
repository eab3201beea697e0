"""What a remote view or a scraper reads: Prometheus metrics and the engine's own plain data.

Owns `/metrics` (Prometheus text format, `lmnb_` prefix: counters of requests and tokens,
gauges of hit rate, queue lengths and pool use, all from `Engine.stats()`), and `/stats`,
`/snapshot`, `/events?since=N`, which return `stats()`, `snapshot()` and `events(since)` as
JSON so that notebook views can draw a runtime in another process. Knows nothing of requests.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from lmnb.server.errors import BadRequest

router = APIRouter()

# (metric, stats key, type, help)
METRICS: list[tuple[str, str, str, str]] = [
    ("requests_total", "num_requests", "counter", "Requests submitted to the engine."),
    ("requests_finished_total", "num_finished", "counter", "Requests finished (any reason)."),
    ("prompt_tokens_total", "prompt_tokens", "counter", "Prompt tokens of admitted requests."),
    ("cached_tokens_total", "cached_tokens", "counter",
     "Prompt tokens served from the radix cache."),
    ("generated_tokens_total", "generated_tokens", "counter", "Output tokens generated."),
    ("computed_tokens_total", "computed_tokens", "counter",
     "Tokens that went through a forward (extend and decode)."),
    ("forced_tokens_total", "forced_tokens", "counter",
     "Output tokens appended by jump-forward."),
    ("evicted_tokens_total", "evicted_tokens", "counter", "Tokens evicted from the cache."),
    ("retracted_total", "retracted", "counter", "Requests retracted under memory pressure."),
    ("extend_steps_total", "extend_steps", "counter", "Extend (prefill) forward steps."),
    ("decode_steps_total", "decode_steps", "counter", "Decode forward steps."),
    ("busy_seconds_total", "busy_seconds", "counter", "Seconds spent in forwards."),
    ("cache_hit_rate", "hit_rate", "gauge", "Cached prompt tokens / prompt tokens."),
    ("num_waiting", "num_waiting", "gauge", "Requests waiting for admission."),
    ("num_running", "num_running", "gauge", "Requests admitted (running)."),
    ("mean_decode_batch", "mean_decode_batch", "gauge", "Mean decode batch size."),
    ("tokens_per_second", "tokens_per_second", "gauge", "Computed tokens per busy second."),
    ("pool_capacity_slots", "capacity", "gauge", "KV pool slots."),
    ("pool_free_slots", "free_slots", "gauge", "KV slots free."),
    ("pool_evictable_slots", "evictable_slots", "gauge", "KV slots cached and evictable."),
    ("pool_protected_slots", "protected_slots", "gauge", "KV slots cached and locked."),
    ("pool_in_flight_slots", "in_flight_slots", "gauge", "KV slots of running requests."),
]


def prometheus_text(stats: dict[str, Any], model: str) -> str:
    """The stats as Prometheus text exposition (version 0.0.4)."""
    label = f'{{model="{_escape(model)}"}}'
    lines = []
    for name, key, kind, help_text in METRICS:
        lines += [f"# HELP lmnb_{name} {help_text}", f"# TYPE lmnb_{name} {kind}",
                  f"lmnb_{name}{label} {_number(stats[key])}"]
    used = 1.0 - stats["free_slots"] / stats["capacity"] if stats["capacity"] else 0.0
    lines += ["# HELP lmnb_pool_usage Fraction of KV slots not free.",
              "# TYPE lmnb_pool_usage gauge", f"lmnb_pool_usage{label} {used!r}"]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    engine = request.app.state.engine
    stats = await run_in_threadpool(engine.stats)
    return PlainTextResponse(prometheus_text(stats, engine.model_name),
                             media_type="text/plain; version=0.0.4")


@router.get("/stats")
async def stats(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(request.app.state.engine.stats))


@router.get("/snapshot")
async def snapshot(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(request.app.state.engine.snapshot))


@router.get("/events")
async def events(request: Request) -> JSONResponse:
    raw = request.query_params.get("since", "0")
    try:
        since = int(raw)
    except ValueError:
        raise BadRequest(f"since must be an integer, got {raw!r}", "since") from None
    if since < 0:
        raise BadRequest(f"since must be >= 0, got {since}", "since")
    return JSONResponse(await run_in_threadpool(request.app.state.engine.events, since))
