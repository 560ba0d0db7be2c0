"""The server's micro-batcher: the texts of concurrent requests classified together, in model calls of bounded
size dealt fairly across the requests waiting."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

logger = logging.getLogger(__name__)


class _Request:
    """One request's texts in the batcher: those handed to a model call so far, and the answers come back."""

    def __init__(self, texts: list[str], tokens: list[int], future):
        self.texts, self.tokens, self.future = texts, tokens, future
        self.handed = 0  # texts given to a model call
        self.deficit = 0.0  # tokens earned in the batcher's round-robin and not yet spent
        self.answered = 0
        self.probabilities: np.ndarray | None = None

    def take(self, share: int) -> list[int]:
        start, self.handed = self.handed, min(len(self.texts), self.handed + share)
        return list(range(start, self.handed))

    def answer(self, rows: list[int], probabilities: np.ndarray) -> None:
        if self.probabilities is None:
            self.probabilities = np.empty((len(self.texts), probabilities.shape[1]), probabilities.dtype)
        self.probabilities[rows] = probabilities
        self.answered += len(rows)
        if self.answered == len(self.texts) and not self.future.done():
            self.future.set_result(self.probabilities)

    def fail(self, err: Exception) -> None:
        self.handed = len(self.texts)  # nothing more of it goes to the model
        if not self.future.done():
            self.future.set_exception(err)


class MicroBatcher:
    """Gathers the texts of concurrent requests and classifies them in one call, on one worker thread, fairly.

    Under load (requests queued up while the model ran) a batch waits up to `batch_wait_ms` for more, as on
    2 cores the model's threads leave the event loop little time to read them while it runs. When the model
    was idle, a batch waits only for requests already being read and checked (`arriving`): a lone request
    pays no wait. `batch_wait_ms=0` with `max_batch_texts=0` turns gathering off: one call per request, the
    baseline the load test compares with.

    Fairness: a model call holds at most `max_batch_texts` texts and `max_batch_tokens` tokens (one text
    at least), dealt by deficit round-robin across the requests waiting: each earns an equal share of the
    tokens. A client looping on 256 long texts gets its share of each call and no more: a one-text request
    waits for one bounded call, not for the whole of someone else's batch. On HTTP/1.1 a connection has one
    request in flight, so this is round-robin across connections too.
    """

    def __init__(self, predict, batch_wait_ms: float = 5.0, max_batch_texts: int = 256, max_batch_tokens: int = 2048):
        self.predict = predict
        self.wait = batch_wait_ms / 1000
        self.max_texts = max_batch_texts
        self.max_tokens = max_batch_tokens or float("inf")
        self.queue: asyncio.Queue | None = None
        self.waiting: deque[_Request] = deque()  # requests with texts not yet handed to a model call
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-spam-model")
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.arriving = 0
        self.on_batch = None  # called with each model call's number of texts (the server's metrics)

    @contextmanager
    def arrival(self):
        """Around a request's reading and checking: while it lasts, a batch being gathered may wait for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    def pending(self) -> int:
        """Requests waiting for the model: queued, or with texts not yet in a model call."""
        return (self.queue.qsize() if self.queue is not None else 0) + len(self.waiting)

    async def classify(self, texts: list[str], tokens: list[int] | None = None) -> np.ndarray:
        """The texts' probabilities; `tokens` their token counts, for the per-call budget (1 each if not given)."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(texts, tokens or [1] * len(texts), future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        ran = False  # before the first batch, a queued request is not a sign of load
        while True:
            under_load = ran and not self.queue.empty()  # requests came in while the last batch ran
            ran = True
            if not self.waiting:
                self.waiting.append(await self.queue.get())
            await self._gather(loop, under_load)
            picked = self._deal()
            if not picked:
                continue
            texts = [request.texts[i] for request, rows in picked for i in rows]
            try:
                probabilities = await loop.run_in_executor(self.executor, self.predict.predict_proba, texts)
            except Exception as err:
                if len(picked) == 1:
                    logger.warning("a request of %d texts failed: %s: %s", len(texts), type(err).__name__, err)
                    picked[0][0].fail(err)
                    continue
                # One request's text must not fail the others gathered with it: each is classified on its own.
                for request, rows in picked:
                    await self._alone(request, rows)
                continue
            self._answered(len(texts))
            start = 0
            for request, rows in picked:
                request.answer(rows, probabilities[start : start + len(rows)])
                start += len(rows)

    async def _gather(self, loop, under_load: bool) -> None:
        """Move queued requests to `waiting`, waiting for more (up to the deadline) while the call is not full."""
        while not self.queue.empty():
            self.waiting.append(self.queue.get_nowait())
        deadline = loop.time() + self.wait
        while self._room() and (under_load or self.arriving or not self.queue.empty()):
            timeout = deadline - loop.time()
            try:
                item = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
            except (asyncio.QueueEmpty, TimeoutError):
                return
            self.waiting.append(item)

    def _room(self) -> bool:
        texts = sum(len(r.texts) - r.handed for r in self.waiting)
        tokens = sum(sum(r.tokens[r.handed :]) for r in self.waiting)
        return texts < self.max_texts and tokens < self.max_tokens

    def _deal(self) -> list[tuple[_Request, list[int]]]:
        """The next model call's texts, by deficit round-robin: each waiting request earns an equal share of the
        call's token budget a round and spends it on its next texts; what it could not spend carries to the next
        call. Short requests go at once; a long text waits until its request has earned its tokens. With
        `max_batch_texts` 0, the first request whole (one call per request)."""
        if not self.max_texts:
            request = self.waiting.popleft()
            return [(request, request.take(len(request.texts)))]
        # A request whose client is gone is not worth computing further.
        for gone in [request for request in self.waiting if request.future.done()]:
            self.waiting.remove(gone)
        budgeted = self.max_tokens != float("inf")
        budget = self.max_tokens if budgeted else self.max_texts  # without a token budget, every text costs 1
        rows: dict[_Request, list[int]] = {}
        texts = spent = 0
        while self.waiting and not rows:  # rounds until a text fits: a request may need several to earn one
            share = budget / len(self.waiting)
            for request in list(self.waiting):
                request.deficit += share
                while request.handed < len(request.texts) and texts < self.max_texts:
                    cost = request.tokens[request.handed] if budgeted else 1
                    if cost > request.deficit or (texts and spent + cost > budget):
                        break
                    rows.setdefault(request, []).extend(request.take(1))
                    request.deficit -= cost
                    texts, spent = texts + 1, spent + cost
                if request.handed == len(request.texts):
                    self.waiting.remove(request)
            self.waiting.rotate(-1)  # the next call starts its round with another request
        return list(rows.items())

    async def _alone(self, request: _Request, rows: list[int]) -> None:
        texts = [request.texts[i] for i in rows]
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict.predict_proba, texts)
        except Exception as err:
            logger.warning("a request of %d texts failed: %s: %s", len(request.texts), type(err).__name__, err)
            request.fail(err)
            if request in self.waiting:
                self.waiting.remove(request)
            return
        self._answered(len(texts))
        request.answer(rows, result)

    def _answered(self, texts: int) -> None:
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(texts)
