"""Engine statistics: cumulative counters per step and per request, as plain data.

Owns the numbers `Engine.stats()` reports (hit rate, computed tokens, steps, batch sizes,
tokens/s, pool use). Knows nothing of how steps are built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.kv_pool import KVPool
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.req import Req
from lmnb.runtime.scheduler import Scheduler, Step


@dataclass
class EngineStats:
    num_requests: int = 0
    num_finished: int = 0
    num_extend_steps: int = 0
    num_decode_steps: int = 0
    num_computed_tokens: int = 0  # tokens that went through a forward (extend and decode)
    num_extend_tokens: int = 0
    num_generated_tokens: int = 0
    num_forced_tokens: int = 0
    num_jump_forward_steps: int = 0
    max_decode_batch: int = 0
    sum_decode_batch: int = 0
    busy_seconds: float = 0.0
    started: float = field(default_factory=time.time)

    def record_step(self, step: Step, batch: ForwardBatch, seconds: float) -> None:
        n = int(batch.input_ids.numel())
        self.num_computed_tokens += n
        self.busy_seconds += seconds
        if step.is_decode:
            self.num_decode_steps += 1
            self.sum_decode_batch += n
            self.max_decode_batch = max(self.max_decode_batch, n)
        else:
            self.num_extend_steps += 1
            self.num_extend_tokens += n

    def record_finish(self, req: Req) -> None:
        self.num_finished += 1
        self.num_generated_tokens += len(req.output_ids)
        self.num_forced_tokens += req.forced_tokens
        self.num_jump_forward_steps += req.jump_forward_steps

    @staticmethod
    def pool_usage(cache: RadixCache, pool: KVPool, sched: Scheduler) -> dict[str, int]:
        return {
            "capacity": pool.capacity,
            "free_slots": pool.num_free,
            "evictable_slots": cache.evictable_size,
            "protected_slots": cache.protected_size,
            "in_flight_slots": sched.in_flight_slots(),
        }

    def as_dict(self, cache: RadixCache, pool: KVPool, sched: Scheduler) -> dict[str, Any]:
        steps = self.num_extend_steps + self.num_decode_steps
        return {
            "num_requests": self.num_requests,
            "num_finished": self.num_finished,
            "num_waiting": len(sched.waiting),
            "num_running": len(sched.admitted),
            "prompt_tokens": cache.num_prompt_tokens,
            "cached_tokens": cache.num_cached_tokens,
            "hit_rate": cache.hit_rate,
            "computed_tokens": self.num_computed_tokens,
            "extend_tokens": self.num_extend_tokens,
            "generated_tokens": self.num_generated_tokens,
            "forced_tokens": self.num_forced_tokens,
            "jump_forward_steps": self.num_jump_forward_steps,
            "extend_steps": self.num_extend_steps,
            "decode_steps": self.num_decode_steps,
            "forward_steps": steps,
            "mean_decode_batch": self.sum_decode_batch / max(self.num_decode_steps, 1),
            "max_decode_batch": self.max_decode_batch,
            "busy_seconds": self.busy_seconds,
            "tokens_per_second": self.num_computed_tokens / self.busy_seconds
            if self.busy_seconds else 0.0,
            "evicted_tokens": cache.num_evicted_tokens,
            "retracted": sched.num_retracted,
            "policy": sched.policy,
            **self.pool_usage(cache, pool, sched),
        }
