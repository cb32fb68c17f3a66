"""The blocking way into a provider runtime: its coroutines run on an event loop of its own.

Callers with no event loop (Celery job workers, scripts, the model manager's executor path for
runtimes that are not async-native) call the blocking methods. The runtime owns one small event
loop on a daemon thread (`LoopThread`, started by `load()`): a blocking method hands its
coroutine to that loop and waits on the future (`LoopThread.wait`); a stream runs as one task on
the loop that feeds a thread-safe queue the calling thread reads from (`LoopThread.iterate`).
The alternatives were a synchronous client in each thread (no shared connection pool, a second
HTTP stack in the project) and a fresh loop per call (`asyncio.run`: a session cannot outlive its
loop, so every call would pay a new TCP and TLS handshake).

A blocking call carries its calling thread's context to the loop thread
(`run_coroutine_threadsafe` copies it): its tracing span, when that thread has one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# Extra wait beyond the model's timeout before a blocked executor thread gives up on the
# loop: aiohttp's own timeouts normally fire first, this only guards against a stuck loop.
GRACE_S = 5.0


class LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()

    def wait(self, coro: Coroutine[Any, Any, T], timeout_s: float, timed_out: Callable[[], Exception]) -> T:
        """Run a coroutine on this loop and wait for it from the calling thread, at most
        `timeout_s` (plus a grace); past that, cancel it and raise `timed_out()`."""
        try:
            future = self.submit(coro)
        except BaseException:
            coro.close()
            raise
        try:
            return future.result(timeout=timeout_s + GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise timed_out() from None

    def iterate(self, stream: AsyncIterator[T], timeout_s: float, timed_out: Callable[[], Exception]) -> Iterator[T]:
        """Items of an async iterator (not started yet) run on this loop, for a blocking
        consumer that waits at most `timeout_s` (plus a grace) for each, then raises `timed_out()`.

        One task drives the whole upstream stream (aiohttp ties a response to the task that
        opened it) and feeds a queue; closing this generator early cancels that task, which
        closes the upstream response.
        """
        items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for item in stream:
                    items.put(("item", item))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer thread, which re-raises it
                items.put(("error", exc))
            else:
                items.put(("end", None))

        future = self.submit(pump())
        try:
            while True:
                try:
                    kind, value = items.get(timeout=timeout_s + GRACE_S)
                except queue.Empty:
                    raise timed_out() from None
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            future.cancel()
