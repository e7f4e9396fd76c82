from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BackgroundLoop, Harness, start_harness
from tests.redis_server import RedisServer


@pytest.fixture
def servers() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def make_relay(servers: BackgroundLoop) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        harness = start_harness(servers, **kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def relay(make_relay: Callable[..., Harness]) -> Harness:
    return make_relay()


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real-API-server tier's etcd + kube-apiserver, one per session (tests/apiserver.py)."""
    from tests.apiserver import ApiServer
    from tests.operator_apiserver_env import IDENTITIES

    server = ApiServer(tmp_path_factory.mktemp("apiserver"), list(IDENTITIES.values()))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(apiserver: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The API server plus a GPT-Omni simulator that outlives each test's event loop."""
    from tests.operator_apiserver_env import Cluster, start_simulator

    loop = BackgroundLoop()
    try:
        simulator = start_simulator(loop)
        yield Cluster(apiserver, simulator.sim, simulator.url, tmp_path_factory.mktemp("releases"))
    finally:
        loop.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real Redis of the test's own (Debian's redis-server on a free loopback port)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[Any]:
    """The cluster tier's single-node Kubernetes, one per session (tests/real_cluster.py)."""
    from tests.real_cluster import running_cluster

    with running_cluster() as cluster:
        yield cluster
