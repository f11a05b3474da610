"""One worker thread that runs every computation, one at a time, with ids, progress, cancellation and a
result cache.

Why one thread: the loaded :class:`~blackbox.Model` holds ONNX Runtime sessions and lazily built graphs that
are not meant to be built twice at once, and two CPU-bound explanations side by side only slow each other
down. Requests queue here instead and are answered in order.

Progress is read from the tqdm bars the library already draws for every long loop (explanations, activation
maximisation steps, top-activation passes): while a job runs, its fraction is the mean ``n / total`` of the
live bars. Jobs whose work has no bar report 0 until they finish.

Cancellation: a queued job is dropped before it starts. A running one is stopped by raising
:class:`JobCancelled` inside the worker thread (``PyThreadState_SetAsyncExc``): the library has no cancel
hook, and the exception lands at the worker's next Python step, i.e. between two ONNX Runtime calls, so a
long single call finishes first.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import itertools
import logging
import queue
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BlackboxError

__all__ = ["Job", "JobCancelled", "JobQueue"]

log = logging.getLogger("blackbox.serve")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class JobCancelled(BaseException):
    """Raised inside the worker to stop a running job (a BaseException, so ``except Exception`` in library
    code does not swallow it)."""


@dataclass
class Job:
    """One unit of work. ``result`` is whatever the function returned (kept by the cache when ``key`` is
    set); ``summary`` the JSON-friendly part a poll shows."""

    id: str
    kind: str
    function: Callable[[Job], Any]
    key: Hashable | None = None
    status: str = QUEUED
    progress: float = 0.0
    error: str | None = None
    result: Any = None
    cached: bool = False
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future, repr=False)
    cancel_requested: bool = False

    def to_dict(self) -> dict[str, Any]:
        summary = getattr(self.result, "summary", None) if self.status == DONE else None
        seconds = (self.finished or time.time()) - self.started if self.started else None
        return {"id": self.id, "kind": self.kind, "status": self.status, "progress": round(self.progress, 4),
                "error": self.error, "cached": self.cached, "seconds": None if seconds is None else round(seconds, 3),
                "result": summary}


def _live_fraction(since: float) -> float | None:
    """Mean n/total of the tqdm bars alive now and started since ``since`` (only the worker draws bars in a
    server; the time leaves out a bar a stopped job never closed)."""
    try:
        from tqdm import tqdm

        bars = [bar for bar in list(getattr(tqdm, "_instances", ()))
                if getattr(bar, "total", None) and getattr(bar, "start_t", 0) >= since]
    except Exception:  # noqa: BLE001 - progress is a nicety; never fail a poll over it
        return None
    if not bars:
        return None
    return sum(min(1.0, bar.n / bar.total) for bar in bars) / len(bars)


class JobQueue:
    """Submit work with :meth:`submit`; poll :meth:`get`; stop with :meth:`cancel`; :meth:`close` at the end.

    ``cache_size`` finished results are kept by key (least recently used dropped first), and a submit whose
    key is cached, queued or running returns that job instead of computing again. Failed and cancelled jobs
    are not cached. ``keep_jobs`` bounds how many job records can be polled."""

    def __init__(self, *, cache_size: int = 128, keep_jobs: int = 1024):
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_key: dict[Hashable, Job] = {}  # queued or running jobs
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._cache_size, self._keep_jobs = cache_size, keep_jobs
        self._ids = itertools.count(1)
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="blackbox-serve-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def submit(self, kind: str, function: Callable[[Job], Any], key: Hashable | None = None) -> Job:
        """A job for ``function(job)``: the cached one, the same one already waiting, or a new one."""
        with self._lock:
            if self._closed:
                raise BlackboxError("the server is shutting down")
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                job = self._new(kind, function, key)
                job.status, job.progress, job.result, job.cached = DONE, 1.0, self._cache[key], True
                job.started = job.finished = time.time()
                job.future.set_result(job.result)
                return job
            if key is not None and key in self._by_key:
                return self._by_key[key]
            job = self._new(kind, function, key)
            if key is not None:
                self._by_key[key] = job
        self._queue.put(job)
        return job

    def run(self, kind: str, function: Callable[[Job], Any], key: Hashable | None = None,
            timeout: float | None = None) -> Any:
        """Submit and wait: the result, or the job's error raised as a BlackboxError."""
        job = self.submit(kind, function, key)
        return self.wait(job, timeout)

    def wait(self, job: Job, timeout: float | None = None) -> Any:
        try:
            return job.future.result(timeout)
        except concurrent.futures.CancelledError:
            raise BlackboxError(f"job {job.id} was cancelled") from None

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status == RUNNING:
                fraction = _live_fraction(job.started or 0.0)
                if fraction is not None:
                    job.progress = max(job.progress, min(fraction, 0.99))
            return job

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (a finished one is left as it is)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status in FINISHED or job.cancel_requested:
                return job
            job.cancel_requested = True
            if job.status == QUEUED:
                self._finish(job, CANCELLED, error="cancelled before it started")
            elif self._running is job:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident),
                                                           ctypes.py_object(JobCancelled))
            return job

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what waits, stop the running job and the worker."""
        with self._lock:
            self._closed = True
            waiting = [job for job in self._jobs.values() if job.status in (QUEUED, RUNNING)]
        for job in waiting:
            self.cancel(job.id)
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker

    def _new(self, kind: str, function: Callable[[Job], Any], key: Hashable | None) -> Job:
        job = Job(id=f"{next(self._ids)}", kind=kind, function=function, key=key)
        self._jobs[job.id] = job
        while len(self._jobs) > self._keep_jobs:
            old_id, old = next(iter(self._jobs.items()))
            if old.status not in FINISHED:
                break
            del self._jobs[old_id]
        return job

    def _finish(self, job: Job, status: str, *, result: Any = None, error: str | None = None) -> None:
        """Under the lock: record the outcome, cache a success, wake waiters."""
        if job.status in FINISHED:
            return
        job.status, job.result, job.error, job.finished = status, result, error, time.time()
        if status == DONE:
            job.progress = 1.0
        if job.key is not None:
            if self._by_key.get(job.key) is job:
                del self._by_key[job.key]
            if status == DONE:
                self._cache[job.key] = result
                self._cache.move_to_end(job.key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if status == DONE:
            job.future.set_result(result)
        elif status == CANCELLED:
            job.future.cancel()
        else:
            job.future.set_exception(BlackboxError(error or "failed"))

    def _loop(self) -> None:
        job: Job | None = None
        while True:
            try:
                job = self._queue.get()
                if job is None:
                    return
                self._one(job)
            except JobCancelled:  # an interrupt that landed after its job's own handler: finish it here
                with self._lock:
                    self._running = None
                    if job is not None:
                        self._finish(job, CANCELLED, error="cancelled")

    def _one(self, job: Job) -> None:
        with self._lock:
            if job.status != QUEUED:
                return
            job.status, job.started, self._running = RUNNING, time.time(), job
        try:
            outcome: tuple[str, Any, str | None] = (DONE, job.function(job), None)
        except JobCancelled:
            outcome = (CANCELLED, None, "cancelled")
        except BlackboxError as error:
            outcome = (FAILED, None, str(error))
        except MemoryError:
            outcome = (FAILED, None, "out of memory: try smaller parameters or a smaller picture")
        except Exception as error:  # noqa: BLE001 - a bug must fail its job, never the worker
            log.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            outcome = (FAILED, None, f"internal error ({type(error).__name__}: {error})")
        with self._lock:
            self._running = None
            self._finish(job, outcome[0], result=outcome[1], error=outcome[2])
