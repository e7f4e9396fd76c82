"""A normal client next to an attack: how long its `/healthz` takes, before and during.

An attack that blocks the relay's event loop shows here first, as every other client
waits for it. Limits come from a baseline measured in the same run, not from the
machine's speed."""

from __future__ import annotations

import statistics
import threading
import time
from types import TracebackType

import httpx

# What a busy CI machine may add to one request on top of ten times its usual time.
STALL_ALLOWANCE_SECONDS = 1.0


class Bystander:
    """`baseline()` first; then `with bystander:` times requests for as long as the block runs."""

    def __init__(self, url: str, pause_seconds: float = 0.02) -> None:
        self._client = httpx.Client(base_url=url, timeout=30)
        self._pause = pause_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.usual: list[float] = []
        self.during: list[float] = []

    def _timed_request(self) -> float:
        started = time.monotonic()
        response = self._client.get("/healthz")
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        return elapsed

    def baseline(self, count: int = 20) -> None:
        for _ in range(count):
            self.usual.append(self._timed_request())
            time.sleep(self._pause)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.during.append(self._timed_request())
            self._stop.wait(self._pause)

    def __enter__(self) -> Bystander:
        self._thread = threading.Thread(target=self._run, name="bystander", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)
        self._client.close()

    def assert_not_starved(self) -> None:
        assert self.usual and self.during, "the bystander made no request"
        limit = STALL_ALLOWANCE_SECONDS + 10 * statistics.median(self.usual)
        slowest = max(self.during)
        assert slowest < limit, (f"a normal client waited {slowest:.2f} s during the attack (usually "
                                 f"{statistics.median(self.usual) * 1000:.0f} ms; limit {limit:.2f} s)")
