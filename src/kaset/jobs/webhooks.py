"""Webhook deliveries: POST a finished job's status to its webhook_url, in the background.

Bounded retries with backoff; never blocks a runner; failures are logged, not raised.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


class WebhookSender:
    def __init__(self, attempts: int = 3, timeout_s: float = 10.0, backoff_s: float = 1.0) -> None:
        self.attempts = attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def send(self, url: str, payload: dict[str, Any]) -> asyncio.Task[bool]:
        task = asyncio.create_task(self._deliver(url, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, url: str, payload: dict[str, Any]) -> bool:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.post(url, json=payload) as response:
                    if response.status < 300:
                        return True
                    reason = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        log.warning("webhook %s for job %s refused: %s; not retried", url, payload.get("id"), reason)
                        return False
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempt < self.attempts:
                log.info("webhook %s for job %s failed (%s); attempt %d of %d", url, payload.get("id"), reason,
                         attempt, self.attempts)
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        log.warning("webhook %s for job %s failed %d times (last: %s); giving up", url, payload.get("id"),
                    self.attempts, reason)
        return False

    async def close(self, grace_s: float = 2.0) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
