"""CUDA graphs for decode steps: the torch runner's decode forward captured once per batch
bucket and key-split bucket, and replayed, so a step costs one launch instead of one per op.

Owns the buckets, each graph's static inputs and captured graph, and padding a decode batch up
to its bucket. Only on CUDA with the Triton attention: its decode takes nothing but device
tensors and a fixed number of key splits, so no op in the step synchronises with the host or
changes shape with the lengths (the torch path's cascade does both). The split count comes
from the step's longest context, bucketed by `triton_attention.num_splits` (powers of two), so
a batch bucket has at most five graphs, each captured on first use. The step's inputs are
staged from the batch's host lists (`ForwardBatch.host`, what the scheduler gave), one pinned
copy, never read back from the device. Padding rows decode token 0 at position 0 into slot 0
(the pool's padding sink) over one key; their logits are dropped. Knows nothing of requests or
sampling. Never runs without a GPU: the engine makes one only where `torch.cuda.is_available()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmnb.runtime.attention import AttentionPlan, triton_splits
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.kv_pool import KVPool
from lmnb.runtime.model import LlamaModel

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor  # [5, bucket] int64: ids, positions, out slots, rows, lens
    logits: torch.Tensor  # [bucket, vocab] fp32, rewritten by every replay
    # every tensor made before the capture that the graph reads (the batch's last-token
    # indices, the plan's views): a graph holds addresses, not references, so these must live
    # as long as it does, or a replay reads memory the allocator has handed to something else
    keep: tuple[ForwardBatch, AttentionPlan]


class DecodeGraphs:
    def __init__(self, model: LlamaModel, max_batch: int) -> None:
        if model.attention != "triton" or model.runner != "torch":
            raise ValueError("CUDA graphs need the torch runner with Triton attention")
        self.model = model
        self.buckets = sorted({b for b in BUCKETS if b < max_batch} | {max_batch})
        self.captured: dict[tuple[int, int], Captured] = {}  # by (batch bucket, splits)
        self.memory = torch.cuda.graph_pool_handle()  # one pool shared by every bucket

    def describe(self) -> str:
        done = sorted(self.captured)
        return (f"decode at batch buckets {self.buckets}, key splits by the longest context "
                f"(powers of two), captured on first use "
                f"(captured so far, (batch, splits): {done or 'none'})")

    def forward(self, batch: ForwardBatch, pool: KVPool, table: torch.Tensor) -> torch.Tensor:
        """`LlamaModel.forward`'s contract; decode steps that fit a bucket replay its graph.
        The logits returned are the graph's buffer: read them before the next step."""
        key = graph_key(batch, self.buckets)
        if key is None:
            return self.model.forward(batch, pool, table)
        entry = self.captured.get(key) or self._capture(*key, pool, table)
        entry.inputs.copy_(graph_inputs(batch, key[0]).pin_memory(), non_blocking=True)
        entry.graph.replay()
        return entry.logits[: len(batch.rows)]

    def _capture(self, size: int, splits: int, pool: KVPool, table: torch.Tensor,
                 ) -> Captured:
        device = table.device
        inputs = torch.zeros((5, size), dtype=torch.int64, device=device)
        inputs[4] = 1  # every padding query sees one key
        ids, positions, slots, rows, lens = inputs
        batch = ForwardBatch(True, ids, positions, slots, [0] * size, [1] * size, [1] * size,
                             torch.arange(size, device=device))
        plan = AttentionPlan([], 0, size, None, None, None, rows, lens, kernels="triton",
                             splits=splits)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (compiles the kernels) off the graph
            self.model.forward(batch, pool, table, plan=plan)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.memory):
            logits = self.model.forward(batch, pool, table, plan=plan)
        self.captured[size, splits] = Captured(graph, inputs, logits, (batch, plan))
        return self.captured[size, splits]


def graph_key(batch: ForwardBatch, buckets: list[int]) -> tuple[int, int] | None:
    """(batch bucket, key splits) of the graph a step replays; None: not a graph's step (an
    extend, a batch past the largest bucket, a batch without its host lists)."""
    n = len(batch.rows)
    if not batch.is_decode or n > buckets[-1] or batch.host is None:
        return None
    return next(b for b in buckets if b >= n), triton_splits(max(batch.seq_lens))


def graph_inputs(batch: ForwardBatch, size: int) -> torch.Tensor:
    """[5, size] int64 on the host: ids, positions, out slots, rows, lens, padded to the
    bucket; from the batch's host lists only (no device read, no sync)."""
    ids, positions, slots = batch.host  # type: ignore[misc]
    pad = size - len(batch.rows)
    return torch.tensor([ids + [0] * pad, positions + [0] * pad, slots + [0] * pad,
                         batch.rows + [batch.rows[0]] * pad, batch.seq_lens + [1] * pad],
                        dtype=torch.int64)
