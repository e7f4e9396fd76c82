"""Passes over one Secret that never overlap: the scheduling both publishers share.

`request()` asks for a pass soon, in the background, retried with backoff until one
succeeds; `publish()` runs a pass that starts after the call (or joins one) and returns
its result. Requests that arrive during a pass are served by one more pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Generic, TypeVar

from gptomni_operator.kube import retry_on_conflict
from gptomni_operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)

Result = TypeVar("Result")


class SerialPasses(Generic[Result]):
    def __init__(self, namespace: str, secret: str, metrics: OperatorMetrics, retry_base_seconds: float,
                 initial: Result) -> None:
        self.namespace, self.secret = namespace, secret
        self._metrics = metrics
        self._retry_base_seconds = retry_base_seconds
        self._lock = asyncio.Lock()
        self._requested = self._served = 0
        self._last = initial
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        """Publish soon, in the background (retried until it succeeds)."""
        self._dirty.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"publish {self.namespace}/{self.secret}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = self._retry_base_seconds
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.publish()
                delay = self._retry_base_seconds
            except Exception as exc:  # the API blipped: try again, never die
                self._metrics.reconcile_errors.labels("publish").inc()
                log.warning("publishing failed, retrying", extra={
                    "secret": f"{self.namespace}/{self.secret}", "error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                self._dirty.set()

    async def publish(self) -> Result:
        """Run a pass that starts after this call (or join one), and return what it published."""
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._served >= ticket:
                return self._last
            covered = self._requested
            self._last = await retry_on_conflict(self._metrics, "secret", self._pass)
            self._served = covered
            return self._last

    async def _pass(self) -> Result:
        raise NotImplementedError
