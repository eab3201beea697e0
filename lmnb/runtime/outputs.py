"""What a step's logits become: prompt logprobs, sampled tokens, stops, jump-forward, results.

Owns the per-token decisions after a forward (which positions need logits, EOS and stop
handling, grammar masks and forced tokens, min/max tokens, streaming chunks) and building the
final GenerateResult. Knows nothing of the model's math or of memory management.
"""

from __future__ import annotations

import numpy as np
import torch

from lmnb.runtime.device import host_to_device
from lmnb.runtime.grammar.bitmask import allocate_bitmask, num_words, unpack_bitmask
from lmnb.runtime.handle import GenerateResult, StreamChunk
from lmnb.runtime.req import Req
from lmnb.runtime.sampler import sample
from lmnb.runtime.scheduler import ExtendItem, Scheduler, Step
from lmnb.runtime.tokenizer import Tokenizer


class OutputProcessor:
    def __init__(
        self, tokenizer: Tokenizer, eos_ids: set[int], max_context: int, vocab_size: int,
        seed: int, device: torch.device | None = None, packed_masks: bool | None = None,
    ) -> None:
        """device: where the logits are (the sampling generators live there too).
        packed_masks: masks cross to the device as packed bits (1 bit a token, 8x fewer
        bytes than bools) applied there by a kernel; None: on a GPU."""
        self.device = device or torch.device("cpu")
        self.packed_masks = self.device.type == "cuda" if packed_masks is None else packed_masks
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_context = max_context
        self.vocab_size = vocab_size
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._seeded: dict[int, torch.Generator] = {}

    # ---- before the forward ---------------------------------------------------------------

    def logit_positions(self, item: ExtendItem) -> list[int]:
        """Offsets into item.ids whose logits are needed (prompt logprobs, the next token)."""
        req, n = item.req, len(item.ids)
        want = []
        lo = req.next_prompt_logprob
        if lo is not None:  # the scheduler's match stopped at or before lo
            hi = len(req.prompt_ids) - 2
            want = [q - item.start for q in range(max(item.start, lo), min(item.start + n - 1,
                                                                              hi) + 1)]
        if item.start + n == req.seq_len and req.params.max_new_tokens > 0:
            want.append(n - 1)
        return want

    # ---- after the forward ----------------------------------------------------------------

    def process(
        self, step: Step, want: list[list[int]], logits: torch.Tensor, scheduler: Scheduler
    ) -> list[Req]:
        """Commit the step, sample next tokens; returns the requests that finished.

        An exception while handling one request's logits (prompt logprobs, masks, sampling,
        grammar, text) ends that request alone, with the exception as its error; its K/V of
        this step is committed (it was computed), its tokens beyond that never are.
        """
        done: list[Req] = []
        to_sample: list[tuple[Req, torch.Tensor]] = []
        offset = 0
        for item, w in zip(step.items, want):
            req = item.req
            # tokens of an extend are shared at once; a decoding request's at its end
            scheduler.commit(item, share=len(item.ids) > 1 or not req.output_ids)
            rows = logits[offset : offset + len(w)]
            offset += len(w)
            try:
                self._prompt_logprobs(req, item, w, rows)
            except Exception as exc:
                _fail(req, exc, done)
                continue
            if item.start + len(item.ids) < req.seq_len:
                continue  # a chunk of a longer extend
            if req.params.max_new_tokens == 0:
                req.finish_reason = "length"
                done.append(req)
            else:
                to_sample.append((req, rows[-1]))
        if to_sample:
            self._sample(to_sample, done)
        return done

    def _sample(self, to_sample: list[tuple[Req, torch.Tensor]], done: list[Req]) -> None:
        """Sample one token for each request and append it; a request whose part fails is
        put in `done` with its error, the others go on."""
        reqs, rows, bans = [], [], []
        for req, row in to_sample:
            try:
                bans.append(self.bans(req))
            except Exception as exc:
                _fail(req, exc, done)
                continue
            reqs.append(req)
            rows.append(row)
        if not reqs:
            return
        gens = [self.generator_for(r) for r in reqs]
        states = {id(g): (g, g.get_state()) for g in gens if g is not None}
        try:
            results: list = list(zip(*self._sample_rows(reqs, rows, gens, bans)))
        except Exception:  # find the row that fails: each alone, from the same random state
            for g, state in states.values():
                g.set_state(state)
            results = []
            for i, req in enumerate(reqs):
                try:
                    results.append(next(zip(*self._sample_rows(
                        [req], rows[i : i + 1], gens[i : i + 1], bans[i : i + 1]))))
                except Exception as exc:
                    results.append(exc)
        for req, res in zip(reqs, results):
            if isinstance(res, Exception):
                _fail(req, res, done)
                continue
            try:
                if self.append_token(req, *res):
                    done.append(req)
                else:
                    self._stream(req, final=False)
            except Exception as exc:
                _fail(req, exc, done)

    def _sample_rows(self, reqs: list[Req], rows: list[torch.Tensor],
                     gens: list[torch.Generator | None],
                     bans: list[np.ndarray | list[int] | None]):
        ids = [b if isinstance(b, list) else [] for b in bans]
        banned_ids = ids if any(ids) else None
        bans = [None if isinstance(b, list) else b for b in bans]
        banned = None
        if self.packed_masks and any(b is not None for b in bans):
            words = np.full((len(reqs), num_words(self.vocab_size)), -1, dtype=np.int32)
            for i, b in enumerate(bans):
                if b is not None:
                    words[i] = b
            allowed = host_to_device(torch.from_numpy(words), rows[0].device)
            return sample(_stack(rows), [r.params for r in reqs], gens, allowed=allowed,
                          banned_ids=banned_ids)
        if any(b is not None for b in bans):
            # numpy: per-row torch ops on 49k-wide rows stall for ms when the cores are busy
            banned = np.zeros((len(reqs), self.vocab_size), dtype=np.bool_)
            for i, b in enumerate(bans):
                if b is not None:
                    banned[i] = b
            banned = host_to_device(torch.from_numpy(banned), rows[0].device)
        return sample(_stack(rows), [r.params for r in reqs], gens, banned,
                      banned_ids=banned_ids)

    def _prompt_logprobs(self, req: Req, item: ExtendItem, w: list[int], rows: torch.Tensor):
        if req.next_prompt_logprob is None:
            return
        last = len(req.prompt_ids) - 2
        picks = [(j, item.start + off) for j, off in enumerate(w) if item.start + off <= last]
        if picks:
            lp = torch.log_softmax(rows[[j for j, _ in picks]], dim=-1)
            nxt = torch.tensor([req.prompt_ids[q + 1] for _, q in picks], device=rows.device)
            req.prompt_logprobs.extend(lp.gather(1, nxt[:, None])[:, 0].tolist())

    def generator_for(self, req: Req) -> torch.Generator | None:
        if req.params.greedy:
            return None
        if req.params.seed is None:
            return self.generator
        if req.rid not in self._seeded:
            self._seeded[req.rid] = torch.Generator(device=self.device).manual_seed(
                req.params.seed)
        return self._seeded[req.rid]

    def bans(self, req: Req) -> np.ndarray | list[int] | None:
        """What a request may not sample now: None (nothing), the stop ids alone (no grammar:
        EOS and stop tokens while `min_new_tokens` is unmet or under `ignore_eos`; a few
        logits set to -inf, not a mask over the vocabulary), or a grammar's whole mask
        (`allowed_words` where masks cross packed, else `banned_row`)."""
        if req.grammar is None:
            return self.stop_ids(req) or None
        return self.allowed_words(req) if self.packed_masks else self.banned_row(req)

    def stop_ids(self, req: Req) -> list[int]:
        """The ids a request may not sample yet for want of length (none once it may stop)."""
        if len(req.output_ids) >= req.params.min_new_tokens and not req.params.ignore_eos:
            return []
        stops = list(req.params.stop_token_ids) + list(self.eos_ids)
        return [s for s in stops if 0 <= s < self.vocab_size]

    def banned_row(self, req: Req) -> np.ndarray | None:
        """[vocab] bool, True where a token may not be sampled (None: nothing banned)."""
        stops = self.stop_ids(req)
        if req.grammar is None and not stops:
            return None
        banned = np.zeros(self.vocab_size, dtype=np.bool_)
        if req.grammar is not None:
            bitmask = allocate_bitmask(1, self.vocab_size)
            req.grammar.fill_bitmask(bitmask[0])  # EOS allowed iff the grammar can end
            banned[:] = ~unpack_bitmask(bitmask, self.vocab_size)[0].numpy()
        banned[stops] = True
        return banned

    def allowed_words(self, req: Req) -> np.ndarray | None:
        """`banned_row` packed: [words] int32, a bit set where a token may be sampled (None:
        nothing banned)."""
        stops = np.array(self.stop_ids(req), dtype=np.int64)
        if req.grammar is None and not len(stops):
            return None
        bitmask = allocate_bitmask(1, self.vocab_size)
        if req.grammar is not None:
            req.grammar.fill_bitmask(bitmask[0])  # EOS allowed iff the grammar can end
        words = bitmask[0].numpy()
        np.bitwise_and.at(words, stops // 32, ~np.left_shift(1, stops % 32).astype(np.int32))
        return words

    def append_token(self, req: Req, tok: int, lp: float) -> bool:
        """Add a sampled token (and any forced ones); True when the request has finished."""
        p = req.params
        req.decode_steps += 1
        if (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids:
            req.finish_reason, req.matched_stop = "stop", tok
            return True
        req.output_ids.append(tok)
        if p.return_logprobs:
            req.output_logprobs.append(lp)
        if req.grammar is not None:
            try:
                req.grammar.accept(tok)
            except ValueError as exc:  # a GrammarError: ends this request only
                req.error = exc
                return True
            self._jump_forward(req)
        req.detok.update(req.output_ids)
        if req.detok.matched_stop is not None:
            req.finish_reason, req.matched_stop = "stop", req.detok.matched_stop
        elif req.grammar is not None and req.grammar.is_finished():
            req.finish_reason = "stop"
        elif len(req.output_ids) >= p.max_new_tokens or req.seq_len >= self.max_context:
            req.finish_reason = "length"
        return req.finish_reason is not None

    def start(self, req: Req) -> None:
        """At submission: text the grammar forces from the start joins the first extend."""
        if req.grammar is not None:
            self._jump_forward(req, reserve=1)  # the first forward samples one more token
            req.detok.update(req.output_ids)

    def _jump_forward(self, req: Req, reserve: int = 0) -> None:
        """Append the grammar's forced tokens, leaving `reserve` positions of the room free."""
        if not req.params.jump_forward:
            return
        room = min(req.params.max_new_tokens - len(req.output_ids),
                   self.max_context - req.seq_len) - reserve
        forced = req.grammar.forced_ids()[: max(room, 0)]
        if forced:
            req.grammar.accept_forced(forced)
            start = len(req.output_ids)
            req.forced_positions.extend(range(start, start + len(forced)))
            req.output_ids.extend(forced)
            req.forced_tokens += len(forced)
            req.jump_forward_steps += 1
            if req.params.return_logprobs:
                req.output_logprobs.extend([0.0] * len(forced))  # forced: probability one

    # ---- delivery -------------------------------------------------------------------------

    def _stream(self, req: Req, final: bool) -> None:
        text = req.detok.pending(final)
        ids = req.output_ids[req.num_streamed_ids :]
        if text or (final and ids):
            req.num_streamed_ids = len(req.output_ids)
            req.handle._push(StreamChunk(text, ids))

    def deliver(self, req: Req) -> None:
        self._seeded.pop(req.rid, None)
        if req.error is not None:
            req.handle._finish(None, req.error)
            return
        req.detok.update(req.output_ids) if req.detok.matched_stop is None else None
        self._stream(req, final=True)
        text_ids, tail = req.detok.split_ids(req.output_ids)
        p = req.params
        result = GenerateResult(
            text=req.detok.text,
            output_ids=list(req.output_ids),
            finish_reason=req.finish_reason or "abort",
            prompt_tokens=len(req.prompt_ids),
            cached_tokens=req.cached_len,
            completion_tokens=len(req.output_ids),
            text_ids=text_ids,
            text_tail=tail,
            prompt_logprobs=list(req.prompt_logprobs) if req.wants_prompt_logprobs else None,
            output_logprobs=list(req.output_logprobs) if p.return_logprobs else None,
            forced_tokens=req.forced_tokens,
            forced_positions=[i for i in req.forced_positions if i < len(req.output_ids)],
            jump_forward_steps=req.jump_forward_steps,
            decode_steps=req.decode_steps,
            matched_stop=req.matched_stop,
        )
        req.handle._finish(result)


def _fail(req: Req, exc: Exception, done: list[Req]) -> None:
    """End req with exc as its error (once; the caller releases it)."""
    req.error = exc
    if req not in done:
        done.append(req)


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """The rows as one [batch, vocab] tensor: on the CPU copied by numpy on this thread (torch's
    copy of 49k-wide rows waits for its intra-op threads, which stall for ms right after a
    step while the kernels' threads still hold the cores)."""
    if rows[0].device.type == "cpu":
        return torch.from_numpy(np.stack([r.numpy() for r in rows]))
    return torch.stack(rows)
