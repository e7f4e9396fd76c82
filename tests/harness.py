"""Real servers for tests: the simulator and the relay under uvicorn on 127.0.0.1.

They run in an event loop on a background thread so that tests can use both the sync
and the async OpenAI clients (a sync client in the servers' own loop would deadlock).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from gptomni_relay.app import create_app
from gptomni_relay.cli import http_limits
from gptomni_relay.edge.server import RunningServer, serve_app
from gptomni_relay.probes import create_metrics_app
from gptomni_relay.settings import RelaySettings
from gptomni_relay.simulator import SimulatorState, build_simulator_app
from gptomni_relay.state import RelayState

T = TypeVar("T")
API_KEY = "sk-test-key"


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self._thread.start()
        self._stack = AsyncExitStack()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        return self.run(self._stack.enter_async_context(manager))

    def close(self) -> None:
        try:
            self.run(self._stack.aclose(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def write_pool_file(directory: Path, entries: list[dict[str, Any]]) -> None:
    """Materialise a pool Secret the way kubelet does: a timestamped directory, an atomic
    `..data` symlink swap, and `credentials.json -> ..data/credentials.json`."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    version_dir = directory / stamp
    version_dir.mkdir()
    document = {"version": 1, "generatedAt": datetime.now(UTC).isoformat(), "credentials": entries}
    (version_dir / "credentials.json").write_text(json.dumps(document))
    write_data_link(directory, stamp)


def write_raw_pool_file(directory: Path, raw: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    (directory / stamp).mkdir()
    (directory / stamp / "credentials.json").write_bytes(raw)
    write_data_link(directory, stamp)


def write_data_link(directory: Path, target: str, file_name: str = "credentials.json") -> None:
    tmp_link = directory / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(target, tmp_link)
    os.replace(tmp_link, directory / "..data")  # rename(2): atomic, as kubelet's AtomicWriter
    link = directory / file_name
    if not link.is_symlink():
        os.symlink(f"..data/{file_name}", link)


def sample_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition, summed over other labels; 0 if absent."""
    return sum(sample.value for family in text_string_to_metric_families(exposition) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


@dataclass
class Harness:
    servers: BackgroundLoop
    sim: SimulatorState
    sim_server: RunningServer
    relay_server: RunningServer
    metrics_server: RunningServer
    state: RelayState
    spans: InMemorySpanExporter
    api_key: str = API_KEY
    _clients: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.relay_server.url

    def client(self, **kwargs: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, **kwargs)
        self._clients.append(client)
        return client

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, **kwargs)

    def http(self) -> httpx.Client:
        client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30)
        self._clients.append(client)
        return client

    @property
    def metrics_url(self) -> str:
        return f"{self.metrics_server.url}/metrics"

    def metrics_text(self) -> str:
        return httpx.get(self.metrics_url, timeout=10).text

    def on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.servers.run(coro)

    async def on_loop_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """`on_loop` from an async test: the test's own loop runs on while the servers' works."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.servers.loop))

    async def sync_pool(self) -> None:
        """One sync tick of the shared pool now, instead of waiting for the next one."""
        await self.on_loop_async(self.state.pool.sync_once())  # type: ignore[attr-defined]

    def close(self) -> None:
        for client in self._clients:
            client.close()


def start_harness(
    servers: BackgroundLoop,
    sim: SimulatorState | None = None,
    cookies: list[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    **settings: Any,
) -> Harness:
    sim = sim or SimulatorState()
    sim_server = servers.enter(serve_app(build_simulator_app(sim)))
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    options: dict[str, Any] = {
        "upstream_url": sim_server.url,
        "api_keys": [API_KEY],
        "credentials": cookies if cookies is not None else ["session=alpha"],
        "eject_probe_seconds": 0,
        "log_format": "text",
    }
    options.update(settings)
    app = create_app(RelaySettings(**options), tracer_provider=provider, clock=clock)
    relay_server = servers.enter(serve_app(app, limits=http_limits(app.state.relay.settings),
                                           timeout_graceful_shutdown=5))
    metrics_server = servers.enter(serve_app(create_metrics_app(app.state.relay), lifespan="off"))
    return Harness(servers, sim, sim_server, relay_server, metrics_server, app.state.relay, spans)
