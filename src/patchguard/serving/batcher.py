"""Micro-batching: requests that arrive within a few milliseconds share one forward pass.

One worker thread owns the model. :meth:`MicroBatcher.submit` queues a request's images and
returns a :class:`concurrent.futures.Future`; the worker takes the first waiting request,
collects more for up to ``max_wait_s`` (or until ``max_batch`` images), runs ``predict`` once on
all of them and answers each request with its own slice. A failure of the forward pass fails
only the requests of that batch; the worker goes on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

PredictFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class QueueFull(RuntimeError):
    """More requests are waiting than the batcher accepts (the server answers 503)."""


@dataclass
class BatchResult:
    """One request's share of a forward pass."""

    scores: np.ndarray  # (n,)
    maps: np.ndarray  # (n, S, S)
    batch_images: int  # images in the forward pass that served it (1 = not batched)


@dataclass
class _Request:
    images: np.ndarray
    future: Future = field(default_factory=Future)


@dataclass
class BatcherStats:
    """Counters since the batcher started."""

    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


class MicroBatcher:
    """Run ``predict(images)`` in one worker thread over requests gathered for ``max_wait_s``.

    ``predict`` takes a float32 (N, S, S, 3) array in [0, 1] and returns scores (N,) and maps
    (N, S, S). A single request larger than ``max_batch`` images runs alone, whole.
    """

    def __init__(self, predict: PredictFn, max_batch: int = 16, max_wait_s: float = 0.005,
                 max_queue: int = 256) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.predict, self.max_batch, self.max_wait_s = predict, max_batch, max_wait_s
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._carry: _Request | None = None  # a request that did not fit the previous batch

    def start(self) -> MicroBatcher:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="patchguard-batcher",
                                                daemon=True)
                self._thread.start()
        return self

    def submit(self, images: np.ndarray) -> Future:
        """Queue one request's images; the future's result is a :class:`BatchResult`."""
        if self._thread is None:
            self.start()
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are waiting; try again shortly")
        request = _Request(np.ascontiguousarray(images, dtype=np.float32))
        self._queue.put(request)
        return request.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued requests, then stop the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """The first request plus those arriving within the wait; True when told to stop."""
        batch, count = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else \
                    self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if count + len(item.images) > self.max_batch:
                # Too large to join: it leads the next batch, ahead of later arrivals.
                self._carry = item
                break
            batch.append(item)
            count += len(item.images)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first, self._carry = self._carry or self._queue.get(), None
            if first is None:
                break
            batch, stop = self._gather(first)
            images = np.concatenate([request.images for request in batch])
            try:
                scores, maps = self.predict(images)
            except BaseException as error:  # noqa: BLE001 - the requests get it, not the thread
                self.stats.failed_batches += 1
                for request in batch:
                    request.future.set_exception(error)
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.images += len(images)
            self.stats.largest_batch = max(self.stats.largest_batch, len(images))
            start = 0
            for request in batch:
                end = start + len(request.images)
                request.future.set_result(BatchResult(scores[start:end], maps[start:end],
                                                      len(images)))
                start = end
