"""The engine: one owner of the model and the KV cache, turning requests into token streams.

`Engine` is synchronous: `add_request`, then `step()` until the request is finished; each
step schedules, runs the model once over the batch, samples, and reports what each touched
request gained. `AsyncEngine` runs an `Engine` in a thread of its own, the only thread that
touches the model and the cache; the server's event loop hands it requests and receives
their outputs through queues, and a stream that is closed early (the client went away)
aborts its request, which frees its blocks at the engine's next step.

Failures stay as small as they can: a sequence whose sampling or decoding fails ends its own
request with an error (`RequestFailed`) and the batch goes on; a step that fails as a whole
(the model's forward pass) fails the requests in flight and the engine goes on; and if the
engine thread ends, for whatever reason, every request waiting on it and every later one fails
at once (`EngineStopped`) instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import torch

from tokenmill.deploy.serve.block_manager import BlockManager
from tokenmill.deploy.serve.metrics import Metrics
from tokenmill.deploy.serve.runner import ModelRunner, kv_bytes_per_token
from tokenmill.deploy.serve.scheduler import Scheduler
from tokenmill.deploy.serve.sequence import Request, Status
from tokenmill.deploy.serve.sequence import Sequence as Seq
from tokenmill.model.sampling import SamplingParams, TokenLogprob, sample
from tokenmill.model.scoring import Scores, score
from tokenmill.model.transformer import Transformer
from tokenmill.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int | None = None  # the pool's size; None: from kv_cache_bytes
    kv_cache_bytes: int | None = None  # None: room for max_num_seqs full-context sequences, within memory
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024  # tokens per step: the chunk size of long prompts
    prefix_caching: bool = True


@dataclass
class Delta:
    """What one choice of a request gained in a step."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    deltas: list[Delta]
    prompt_tokens: int
    completion_tokens: int  # over all choices, so far
    finished: bool
    error: str | None = None  # the request failed (and is finished): what went wrong, for the log


class RequestFailed(RuntimeError):
    """This request failed inside the engine; the others go on."""


class EngineStopped(RuntimeError):
    """The engine thread is not running: no request can be served."""


def pool_blocks(model: Transformer, config: EngineConfig) -> int:
    """How many blocks the KV-cache pool gets."""
    if config.num_blocks is not None:
        return config.num_blocks
    embedding = model.tok_embeddings.weight  # the activations' dtype and device, quantized or not
    block_bytes = kv_bytes_per_token(model.config, embedding.dtype) * config.block_size
    if config.kv_cache_bytes is not None:
        return config.kv_cache_bytes // block_bytes
    wanted = config.max_num_seqs * -(-model.config.context_length // config.block_size) + 1
    if embedding.device.type == "cuda":
        available = int(0.9 * torch.cuda.mem_get_info(embedding.device)[0])
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    return min(wanted, available // block_bytes)


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: EngineConfig | None = None) -> None:
        config = config or EngineConfig()
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.context_length = model.config.context_length
        num_blocks = pool_blocks(model, config)
        self.blocks = BlockManager(num_blocks, config.block_size, config.prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(model, num_blocks, config.block_size)
        self.metrics = Metrics()
        self.requests: dict[str, Request] = {}
        self._arrivals, self._seq_ids = itertools.count(), itertools.count()
        self._end_ids = set(tokenizer.stop_ids)  # end of a document, end of a chat turn

    @property
    def capacity_tokens(self) -> int:
        return self.blocks.num_usable_blocks * self.blocks.block_size

    def check(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Refuse, with a ValueError that says why, a request this engine cannot serve."""
        vocab = self.model.config.vocab_size
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        bad = next((t for t in [*prompt_ids, *params.stop_token_ids, *params.logit_bias] if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        total = len(prompt_ids) + params.max_tokens
        if total > self.context_length:
            raise ValueError(
                f"this model's maximum context length is {self.context_length} tokens, but {total} were "
                f"requested ({len(prompt_ids)} in the prompt, {params.max_tokens} to generate)"
            )
        if total > self.capacity_tokens:
            raise ValueError(f"{total} tokens do not fit the KV cache of {self.capacity_tokens} tokens")
        if params.n > self.config.max_num_seqs:
            raise ValueError(f"n ({params.n}) is more than the {self.config.max_num_seqs} sequences a batch holds")

    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        self.check(prompt_ids, params)
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        request = Request(request_id, list(prompt_ids), params, next(self._arrivals))
        request.seqs.append(self._new_sequence(request, 0, list(prompt_ids)))
        self.requests[request_id] = request
        self.scheduler.add(request.seqs[0])
        self.metrics.prompt_tokens.inc(len(prompt_ids))

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            for seq in request.seqs:
                self.scheduler.remove(seq)
            self.metrics.finished.labels("abort").inc()
            self._update_gauges()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once over the batch, sample; report each request that moved."""
        hits_before, queries_before = self.blocks.prefix_hits, self.blocks.prefix_queries
        plan = self.scheduler.schedule()
        self.metrics.preemptions.inc(len(plan.preempted))
        if not plan.seqs:
            return []
        self.runner.copy_blocks(plan.copies)
        logits = self.runner.execute(
            [s.token_ids for s in plan.seqs], [s.num_computed for s in plan.seqs], plan.num_tokens,
            [self.blocks.tables[s.seq_id] for s in plan.seqs],
        )
        rows, seqs = [], []
        for row, (seq, n) in enumerate(zip(plan.seqs, plan.num_tokens)):
            seq.num_computed += n
            self.blocks.mark_computed(seq.seq_id, seq.token_ids, seq.num_computed)
            if seq.num_uncomputed:
                continue  # a chunk from the middle of a prompt: nothing to sample yet
            family = [seq] if seq.request.forked else self._fork(seq)
            rows += [row] * len(family)
            seqs += family
        sampled, failed = self._sample(logits, rows, seqs)
        now = time.perf_counter()
        touched: dict[str, Request] = {}
        for seq, token, logprob in sampled:
            request = seq.request
            if request.request_id in failed:
                continue  # another of its choices failed
            stop_ids = set(request.params.stop_token_ids)
            if not request.params.ignore_eos:
                stop_ids |= self._end_ids
            try:
                seq.append(token, logprob, self.tokenizer, stop_ids, self.context_length)
            except Exception as e:  # noqa: BLE001 - e.g. the tokenizer on this sequence's text: its request only
                failed[request.request_id] = (request, e)
                continue
            self._record_timing(seq, now)
            if seq.status is Status.FINISHED:
                self.scheduler.remove(seq)
            touched[request.request_id] = request
        self.metrics.generation_tokens.inc(len(sampled))
        self.metrics.prefix_queries.inc(self.blocks.prefix_queries - queries_before)
        self.metrics.prefix_hits.inc(self.blocks.prefix_hits - hits_before)
        outputs = [self._output(r) for r in touched.values() if r.request_id not in failed]
        for out in outputs:
            if out.finished:
                request = self.requests.pop(out.request_id)
                for seq in request.seqs:
                    self.metrics.finished.labels(seq.finish_reason).inc()
        outputs += [self._fail(request, error) for request, error in failed.values()]
        self._update_gauges()
        return outputs

    def _sample(self, logits: torch.Tensor, rows: list[int], seqs: list[Seq]
                ) -> tuple[list[tuple[Seq, int, TokenLogprob | None]], dict[str, tuple[Request, Exception]]]:
        """Each sequence's next token, all in one call to the sampler; if that fails, one sequence at a
        time, so that a sequence whose sampling fails (its parameters, its logits) fails its own
        request only. Their generators are rewound first: a seeded choice draws the same tokens."""
        def run(idx: list[int]) -> tuple[list[int], list[TokenLogprob | None]]:
            return sample(logits[[rows[i] for i in idx]], [seqs[i].request.params for i in idx],
                          [seqs[i].request.prompt_ids for i in idx], [seqs[i].output_ids for i in idx],
                          [seqs[i].generator for i in idx])

        states = [s.generator.get_state() if s.generator is not None else None for s in seqs]
        try:
            tokens, logprobs = run(list(range(len(seqs))))
        except Exception:  # noqa: BLE001 - whose it was is found row by row below
            logger.warning("sampling a batch of %d sequences failed: sampling them one by one", len(seqs))
        else:
            return list(zip(seqs, tokens, logprobs)), {}
        sampled, failed = [], {}
        for i, (seq, state) in enumerate(zip(seqs, states)):
            if seq.request.request_id in failed:
                continue
            if state is not None:
                seq.generator.set_state(state)
            try:
                (token,), (logprob,) = run([i])
            except Exception as e:  # noqa: BLE001 - this sequence's request fails, the batch goes on
                failed[seq.request.request_id] = (seq.request, e)
                continue
            sampled.append((seq, token, logprob))
        return sampled, failed

    def _fail(self, request: Request, error: Exception) -> RequestOutput:
        """End a request that failed: its sequences leave the batch and give back their blocks."""
        logger.error("request %s failed", request.request_id, exc_info=error)
        self.requests.pop(request.request_id, None)
        for seq in request.seqs:
            self.scheduler.remove(seq)
        self.metrics.finished.labels("error").inc()
        return RequestOutput(request.request_id, [], len(request.prompt_ids),
                             sum(len(s.output_ids) for s in request.seqs), True, error=repr(error))

    def _new_sequence(self, request: Request, index: int, token_ids: list[int]) -> Seq:
        generator = None
        if not request.params.greedy:
            seed = request.params.seed if request.params.seed is not None else random.getrandbits(63)
            generator = torch.Generator(device=self.runner.device).manual_seed(seed + index)
        return Seq(next(self._seq_ids), request, index, token_ids, generator)

    def _fork(self, seq: Seq) -> list[Seq]:
        """The prompt is computed: the request's n sequences start from it, sharing its blocks."""
        request = seq.request
        request.forked = True
        for index in range(1, request.params.n):
            child = self._new_sequence(request, index, list(seq.token_ids))
            child.num_computed = seq.num_computed
            self.blocks.fork(seq.seq_id, child.seq_id)
            self.scheduler.add_running(child)
            request.seqs.append(child)
        return request.seqs

    def _record_timing(self, seq: Seq, now: float) -> None:
        request = seq.request
        if request.first_token_time is None:
            request.first_token_time = now
            self.metrics.ttft.observe(now - request.arrival_time)
        if seq.last_token_time is not None:
            self.metrics.itl.observe(now - seq.last_token_time)
        seq.last_token_time = now

    def _output(self, request: Request) -> RequestOutput:
        deltas = []
        for seq in request.seqs:
            new_ids = seq.output_ids[seq.sent_tokens :]
            if not new_ids:  # this choice did not move in this step
                continue
            logprobs = seq.logprobs[seq.sent_tokens :] if request.params.logprobs is not None else []
            seq.sent_tokens += len(new_ids)
            deltas.append(Delta(seq.index, seq.new_text(), new_ids, logprobs, seq.finish_reason))
        return RequestOutput(
            request.request_id, deltas, len(request.prompt_ids),
            sum(len(s.output_ids) for s in request.seqs), request.finished,
        )

    def _update_gauges(self) -> None:
        running = {s.request.request_id for s in self.scheduler.running}
        waiting = {s.request.request_id for s in self.scheduler.waiting} - running
        self.metrics.running.set(len(running))
        self.metrics.waiting.set(len(waiting))
        self.metrics.kv_usage.set(self.blocks.usage())


class AsyncEngine:
    """An `Engine` in its own thread, fed from an asyncio event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.wake = threading.Event()
        self.sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}  # engine thread only
        self.failures = 0
        self._stopping = False
        # Set once, under the lock, as the engine thread ends: a request posted before it is
        # failed by the thread on its way out, one posted after it is refused at once.
        self._stopped = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="tokenmill-engine", daemon=True)

    def start(self) -> AsyncEngine:
        self.thread.start()
        return self

    def shutdown(self) -> None:
        self._stopping = True
        self.wake.set()
        self.thread.join()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self._stopped

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """The outputs of one request as the engine produces them. A ValueError says why a request
        is refused, RequestFailed that it failed inside the engine, EngineStopped that the engine
        thread is not running; closing the stream early aborts the request."""
        self.engine.check(prompt_ids, params)
        request_id = request_id or uuid.uuid4().hex
        sink: asyncio.Queue = asyncio.Queue()
        self._post(("add", request_id, list(prompt_ids), params, asyncio.get_running_loop(), sink))
        finished = False
        try:
            while not finished:
                out = await sink.get()
                if isinstance(out, BaseException):
                    finished = True  # the engine has let go of it already
                    raise out
                finished = out.finished
                yield out
        finally:
            if not finished:
                self._post(("abort", request_id))

    async def score(self, prompt_ids: Sequence[int], top: int) -> Scores:
        """The log-probability of each prompt token after the ones before it (a completion's
        `echo`), computed on the engine thread between steps: the thread owns the model."""
        self.engine.check(prompt_ids, SamplingParams(max_tokens=1))
        request_id = uuid.uuid4().hex
        sink: asyncio.Queue = asyncio.Queue()
        self._post(("score", request_id, list(prompt_ids), top, asyncio.get_running_loop(), sink))
        out = await sink.get()
        if isinstance(out, BaseException):
            raise out
        return out

    def _post(self, message: tuple) -> None:
        with self._lock:
            if self._stopped:
                if message[0] == "abort":
                    return  # nothing runs any more
                raise EngineStopped("the engine is not running")
            self.inbox.put(message)
        self.wake.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self.wake.clear()
                self._drain_inbox()
                if not self.engine.has_unfinished():
                    self.wake.wait()
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as e:  # noqa: BLE001 - one failed step must not take the server down
                    self._fail_all(e)
                    continue
                for out in outputs:
                    self._send(out.request_id, out if out.error is None else RequestFailed(out.error))
                    if out.finished:
                        self.sinks.pop(out.request_id, None)
        except BaseException:
            logger.critical("the engine thread failed: every request is refused from now on", exc_info=True)
            raise
        finally:
            self._close()

    def _drain_inbox(self) -> None:
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return
            if message[0] == "score":
                _, request_id, prompt_ids, top, loop, sink = message
                self.sinks[request_id] = (loop, sink)
                try:
                    if self._stopped:
                        raise EngineStopped("the engine is not running")
                    # The first token has no probability of its own: a one-token prompt has nothing to score.
                    scores = score(self.engine.model, [prompt_ids], top)[0] if len(prompt_ids) > 1 else Scores([], [], [])
                    self._send(request_id, scores)
                except EngineStopped as e:
                    self._send(request_id, e)
                except Exception as e:
                    logger.error("request %s could not be scored", request_id, exc_info=e)
                    self._send(request_id, RequestFailed(repr(e)))
                self.sinks.pop(request_id)
            elif message[0] == "add":
                _, request_id, prompt_ids, params, loop, sink = message
                self.sinks[request_id] = (loop, sink)
                try:
                    if self._stopped:
                        raise EngineStopped("the engine is not running")
                    self.engine.add_request(request_id, prompt_ids, params)
                except (ValueError, EngineStopped) as e:
                    self._send(request_id, e)
                    self.sinks.pop(request_id)
                except Exception as e:
                    logger.error("request %s could not be added", request_id, exc_info=e)
                    self._send(request_id, RequestFailed(repr(e)))
                    self.sinks.pop(request_id)
            else:
                self.engine.abort_request(message[1])
                self.sinks.pop(message[1], None)

    def _send(self, request_id: str, item: RequestOutput | BaseException) -> None:
        loop, sink = self.sinks[request_id]
        try:
            loop.call_soon_threadsafe(sink.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.engine.abort_request(request_id)

    def _fail_all(self, error: Exception) -> None:
        """Abort every request in flight, telling each it failed, and carry on with an empty engine."""
        self.failures += 1
        logger.error("an engine step failed: every request in flight fails", exc_info=error)
        for request_id in list(self.sinks):
            self.engine.abort_request(request_id)
            self._send(request_id, RequestFailed(repr(error)))
        self.sinks.clear()

    def _close(self) -> None:
        """The thread is ending: fail every request it holds or that is still in the inbox."""
        with self._lock:
            self._stopped = True
        self._drain_inbox()  # nothing more can arrive: each is answered EngineStopped
        for request_id in list(self.sinks):
            try:
                self._send(request_id, EngineStopped("the engine is not running"))
                self.engine.abort_request(request_id)
            except Exception:
                logger.exception("request %s could not be aborted", request_id)
        self.sinks.clear()
