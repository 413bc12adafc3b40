"""The job queue: bounded concurrency per device, progress that a web page can follow.

One CPU job already keeps every core busy (the engine's operations are multi-threaded), so running
a second one beside it only splits the cores and doubles the memory: by default a device runs one
job at a time and a second visitor's job waits in line, with its place shown. The line itself is
bounded (`max_queued`) so a flood of requests is refused with a one-line message instead of
piling up images in memory.

Jobs run in plain worker threads (torch releases the GIL); the asyncio side learns of changes
through `Job.wait_change`, woken from the worker by the event loop's `call_soon_threadsafe`.
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
from collections import deque
from typing import Callable

from ..errors import PcsrError


class Busy(PcsrError):
    """The line of waiting jobs is full."""


class Job:
    """One unit of work and what a page needs to follow it: state, place in line, tiles done."""

    def __init__(self, fn: Callable[["Job"], dict], loop: asyncio.AbstractEventLoop | None = None):
        self.id = secrets.token_urlsafe(12)
        self.fn = fn
        self.state = "queued"           # queued, running, done, failed
        self.position = 0               # jobs ahead of this one while queued
        self.done = self.total = 0      # tiles, when the core reports them
        self.result: dict | None = None
        self.error: str | None = None
        self.created = time.monotonic()
        self.version = 0
        self._loop = loop
        self._event = asyncio.Event() if loop is not None else None
        self.finished = threading.Event()

    # -------------------------------------------------------------- from any thread
    def changed(self) -> None:
        self.version += 1
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                pass

    def progress(self, total: int) -> "Progress":
        """What the core's `progress` argument wants: called with a tile count, gives a bar."""
        return Progress(self, total)

    def snapshot(self) -> dict:
        out = {"id": self.id, "state": self.state, "position": self.position, "done": self.done,
               "total": self.total}
        if self.state == "done":
            out["result"] = self.result
        if self.state == "failed":
            out["error"] = self.error
        return out

    # -------------------------------------------------------------- on the event loop
    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_change(self, version: int, timeout: float) -> bool:
        """Until the job changes from `version` or `timeout` seconds pass; True if it changed."""
        if self.version != version or self._event is None:
            return self.version != version
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.version != version


class Progress:
    """A tqdm-like bar (update, total, refresh, reset, close) that moves a job's tile counts."""

    def __init__(self, job: Job, total: int):
        self.job = job
        job.done, job.total = 0, int(total)
        job.changed()

    @property
    def total(self) -> int:
        return self.job.total

    @total.setter
    def total(self, value: int) -> None:  # the core adds tiles when it splits one after running out of memory
        self.job.total = int(value)

    def update(self, n: int = 1) -> None:
        self.job.done += int(n)
        self.job.changed()

    def refresh(self) -> None:
        self.job.changed()

    def reset(self, total: int | None = None) -> None:
        self.job.done = 0
        if total is not None:
            self.job.total = int(total)
        self.job.changed()

    def close(self) -> None:
        pass


class Lane:
    """A line of jobs for one device, run by `workers` threads in the order they came."""

    _names = itertools.count()

    def __init__(self, name: str, workers: int = 1, max_queued: int = 16):
        if workers < 1:
            raise PcsrError(f"a device needs at least one worker, got {workers}")
        self.name, self.max_queued = name, max_queued
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"pcsr-serve-{name}-{next(self._names)}",
                                          daemon=True) for _ in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._waiting) >= self.max_queued:
                raise Busy(f"the server is busy ({len(self._waiting)} jobs waiting); try again in a moment")
            job.position = len(self._waiting)
            self._waiting.append(job)
            self._cond.notify()
        return job

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def close(self) -> None:
        """Stop taking jobs; the waiting ones fail, a running one finishes in its daemon thread."""
        with self._cond:
            self._closed = True
            dropped = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in dropped:
            _finish(job, error="the server is shutting down")

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                ahead = list(self._waiting)
            for i, other in enumerate(ahead):  # everyone behind moves up one place
                other.position = i
                other.changed()
            job.state = "running"
            job.changed()
            try:
                result = job.fn(job)
            except Exception as err:  # noqa: BLE001 - a failed job must never stop the lane
                _finish(job, error=_one_line(err))
            else:
                _finish(job, result=result)


def _finish(job: Job, result: dict | None = None, error: str | None = None) -> None:
    job.result, job.error = result, error
    job.state = "failed" if error is not None else "done"
    job.changed()
    job.finished.set()


def _one_line(err: BaseException) -> str:
    """Jobs raise PcsrError with the picture's name (pcsr.serve.work); anything else is a bug,
    still said in one line, in the command's wording."""
    if isinstance(err, PcsrError):
        return " ".join(str(err).split())
    from pathlib import Path

    from ..cli.upscale import failure_reason
    return failure_reason(Path("job"), err)
