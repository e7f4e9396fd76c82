"""The Redis deployments the shared pool is documented to work with (docs/shared-pool.md),
each a real Debian redis-server: a least-privilege ACL user (no CONFIG, no CLIENT), TLS
with a CA made for the test, both together (managed Redis), and a Redis Cluster whose
node named in the URL does not own the relay's keys (MOVED is followed)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gptomni_common.api_key_set import KeyLimits
from gptomni_relay.core.key_limits import KeyLimitExceeded
from gptomni_relay.core.key_limits_store import StoreCounts
from gptomni_relay.core.pool import PoolMode
from gptomni_relay.core.shared_store import Candidate
from gptomni_relay.core.store_link import StoreUnavailable
from gptomni_relay.infra.redis_connection import connect_store, moved_to
from gptomni_relay.settings import RelaySettings
from gptomni_relay.state import ConfigurationError, build_pool
from gptomni_relay.state import connect_store as store_from_settings
from tests.harness import Harness
from tests.processes import free_port
from tests.redis_server import RedisServer, TlsFiles, make_test_ca
from tests.system_parts import require_binary
from tests.test_shared_pool import ask

PASSWORD = "relay-" + "pw" * 12
# Every command the relay sends, and every one its scripts call, on its own keys only: no
# CONFIG, no CLIENT (so no CLIENT SETNAME), no INFO, no SCRIPT, no FLUSH, no KEYS.
RELAY_ACL = ("user relay on >" + PASSWORD + " resetkeys ~{gptomni}:* ~{t}:* resetchannels -@all "
             "+evalsha +eval +ping +zrem +set +del +get +mget +pttl +incr +incrby +expire +pexpire "
             "+zadd +zcount +zcard +zscore +zrange +zrangebyscore +zremrangebyscore +time")


def acl_args(directory: Path) -> tuple[str, ...]:
    acl = directory / "users.acl"
    acl.write_text(RELAY_ACL + "\n")
    return ("--aclfile", str(acl))


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, extra_args=acl_args(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    (tmp_path / "pki").mkdir()
    return make_test_ca(tmp_path / "pki")


@pytest.fixture
def managed_redis(tmp_path: Path, tls_files: TlsFiles) -> Iterator[RedisServer]:
    """What a managed Redis offers: TLS only, an ACL user, no CONFIG or CLIENT rights."""
    server = RedisServer(tmp_path, tls=tls_files, extra_args=acl_args(tmp_path))
    server.start()
    yield server
    server.stop()


def denied(server: RedisServer) -> set[str]:
    """What the relay's user was refused (ACL LOG)."""
    with server.client() as admin:
        return {entry["object"] for entry in admin.acl_log() if entry["username"] == "relay"}


def test_the_acl_is_least_privilege(acl_redis: RedisServer) -> None:
    with redis.Redis(port=acl_redis.port, username="relay", password=PASSWORD) as relay_user:
        for forbidden in (("CONFIG", "GET", "maxmemory"), ("CLIENT", "SETNAME", "x"), ("INFO",), ("FLUSHALL",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                relay_user.execute_command(*forbidden)
        with pytest.raises(redis.exceptions.NoPermissionError):
            relay_user.set("other-app:key", "1")


async def test_an_acl_user_without_client_rights_serves_in_shared_mode(acl_redis: RedisServer, make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(redis_url=acl_redis.url, redis_username="relay", redis_password=PASSWORD)
    assert relay.state.pool.mode is PoolMode.SHARED
    assert await ask(relay) == 200
    assert "client|setname" in denied(acl_redis)  # refused, and the connection was used all the same
    assert relay.state.pool.mode is PoolMode.SHARED and relay.state.pool.store_up
    with acl_redis.client() as admin:
        assert admin.exists("{gptomni}:replicas")  # the heartbeat is in the store


async def test_a_relay_asked_not_to_name_itself_sends_no_client_command(acl_redis: RedisServer) -> None:
    store = store_from_settings(RelaySettings(redis_url=acl_redis.url, redis_username="relay",
                                              redis_password=PASSWORD, redis_client_name=""))
    assert store is not None
    try:
        assert await store._line.send(b"*1\r\n$4\r\nPING\r\n") == "PONG"
    finally:
        await store.aclose()
    assert "client|setname" not in denied(acl_redis)


async def test_key_limits_through_the_acl_user(acl_redis: RedisServer) -> None:
    store = connect_store(acl_redis.url, PASSWORD, 1.0, "t", 30, username="relay")
    counts = StoreCounts(store, lease_seconds=30, expected_replicas=1, sync_seconds=0.5)
    limits = KeyLimits(requests_per_minute=2, max_concurrent_streams=5, tokens_per_day=1000)
    try:
        await counts.admit("k", limits, "r:1")
        await counts.admit("k", limits, "r:2")
        with pytest.raises(KeyLimitExceeded):
            await counts.admit("k", limits, "r:3")
        assert await counts.release("k", limits, "r:1", 7) == 7  # counted in the store, not the fallback
        await counts.renew()
    finally:
        await store.aclose()
    assert not denied(acl_redis) - {"client|setname"}


async def test_a_wrong_acl_password_is_refused_and_never_shown(acl_redis: RedisServer,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    store = connect_store(acl_redis.url, "not-" + PASSWORD, 1.0, "t", 30, username="relay")
    try:
        with pytest.raises(StoreUnavailable, match="WRONGPASS") as refused:
            await store._line.send(b"*1\r\n$4\r\nPING\r\n")
    finally:
        await store.aclose()
    assert PASSWORD not in str(refused.value) + caplog.text


def test_an_acl_user_needs_its_password() -> None:
    with pytest.raises(ConfigurationError, match="ACL user needs its password"):
        build_pool(RelaySettings(redis_url="redis://127.0.0.1:1/0", redis_username="relay"))


# --- TLS ------------------------------------------------------------------------------------

async def test_managed_redis_tls_and_an_acl_user(managed_redis: RedisServer, tls_files: TlsFiles,
                                                 make_relay, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    assert managed_redis.url.startswith("rediss://")
    relay: Harness = make_relay(redis_url=managed_redis.url, redis_username="relay", redis_password=PASSWORD,
                                redis_ca_file=tls_files.ca)
    assert relay.state.pool.mode is PoolMode.SHARED
    assert await ask(relay) == 200
    assert relay.state.pool.mode is PoolMode.SHARED
    assert PASSWORD not in caplog.text + relay.metrics_text() + str(relay.state.settings)


async def test_tls_with_a_ca_that_did_not_sign_the_server_is_refused(managed_redis: RedisServer,
                                                                     tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    stranger = make_test_ca(tmp_path / "other")
    store = connect_store(managed_redis.url, PASSWORD, 2.0, "t", 30, username="relay", ca_file=str(stranger.ca))
    try:
        with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await store._line.send(b"*1\r\n$4\r\nPING\r\n")
    finally:
        await store.aclose()


async def test_tls_checks_the_host_name(managed_redis: RedisServer, tls_files: TlsFiles) -> None:
    """The certificate names localhost and 127.0.0.1: both pass; the CA in the URL works too."""
    for host in ("localhost", "127.0.0.1"):
        url = f"rediss://{host}:{managed_redis.port}/0?ssl_ca_certs={tls_files.ca}"
        store = connect_store(url, PASSWORD, 2.0, "t", 30, username="relay")
        try:
            prepared = store.prepare([Candidate("c", 1, 1, "fp")])
            assert await store.acquire(prepared, frozenset(), "r:1", 0) == 0
            assert await store.release(store.lease_key("c"), "r:1") == 1
        finally:
            await store.aclose()


def test_a_ca_file_for_a_plain_url_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CA file is for a rediss:// URL"):
        build_pool(RelaySettings(redis_url="redis://127.0.0.1:1/0", redis_ca_file=tmp_path / "ca.pem"))


def test_a_ca_file_that_cannot_be_read_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="GPTOMNI_REDIS_URL"):
        build_pool(RelaySettings(redis_url="rediss://127.0.0.1:1/0", redis_ca_file=tmp_path / "missing.pem"))


# --- Redis Cluster --------------------------------------------------------------------------

def cluster_port() -> int:
    """A free port whose cluster bus (port + 10000) is free too and still a port."""
    import socket

    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for a cluster node")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Three primaries, no replicas: `redis-cli --cluster create` splits the slots."""
    cli = require_binary("redis-cli", "20-redis.sh")
    nodes = []
    for i in range(3):
        directory = tmp_path / f"node{i}"
        directory.mkdir()
        nodes.append(RedisServer(directory, port=cluster_port(), extra_args=("--cluster-enabled", "yes", "--cluster-config-file",
                                                        str(directory / "nodes.conf"))))
    try:
        for node in nodes:
            node.start()
        subprocess.run([str(cli), "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        for node in nodes:
            with node.client() as client:
                while client.cluster("info")["cluster_state"] != "ok":
                    assert time.monotonic() < deadline, "the cluster did not become ok"
                    time.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def owner_of(nodes: list[RedisServer], key: str) -> RedisServer:
    with nodes[0].client() as client:
        slot = client.cluster("keyslot", key)
        for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in nodes if n.port == int(primary[1]))
    raise AssertionError("no node owns the slot")


async def test_a_cluster_node_that_does_not_own_the_keys_redirects_and_the_store_follows(
        cluster: list[RedisServer]) -> None:
    owner = owner_of(cluster, "{t}:leases:c")
    other = next(n for n in cluster if n is not owner)
    store = connect_store(other.url, None, 1.0, "t", 30)
    try:
        prepared = store.prepare([Candidate("c", 2, 1, "fp")])
        assert await store.acquire(prepared, frozenset(), "r:1", 0) == 0  # MOVED, followed, run on the owner
        assert await store.acquire(prepared, frozenset(), "r:2", 0) == 0  # straight to the owner now
        with owner.client() as client:
            assert client.zcard("{t}:leases:c") == 2
        assert await store.release(store.lease_key("c"), "r:1") == 1
    finally:
        await store.aclose()


async def test_the_shared_pool_on_a_cluster(cluster: list[RedisServer], make_relay) -> None:  # noqa: ANN001
    owner = owner_of(cluster, "{gptomni}:replicas")
    other = next(n for n in cluster if n is not owner)
    relay: Harness = make_relay(redis_url=other.url)
    assert relay.state.pool.mode is PoolMode.SHARED
    assert await asyncio.gather(*(ask(relay) for _ in range(5))) == [200] * 5
    with owner.client() as client:
        assert client.exists("{gptomni}:replicas")


def test_moved_replies_are_read_strictly() -> None:
    assert moved_to("MOVED 3999 127.0.0.1:6381") == ("127.0.0.1", 6381)
    assert moved_to("MOVED 3999 [::1]:6381") == ("::1", 6381)
    assert moved_to("MOVED 3999 redis-1.cache.internal:6379") == ("redis-1.cache.internal", 6379)
    for garbage in ("MOVED 3999", "MOVED 3999 host:port", "MOVED 1 :6379", "ASK 3999 127.0.0.1:6381",
                    "MOVED 1 h:99999"):
        assert moved_to(garbage) is None, garbage


async def test_a_redirect_to_a_node_out_of_reach_returns_to_the_configured_address() -> None:
    """A store that redirects to a dead node: that command fails, the next goes to the URL's node again."""
    dead_port = free_port()
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(65536)  # CLIENT SETNAME
        writer.write(b"+OK\r\n")
        while await reader.read(65536):
            writer.write(f"-MOVED 1 127.0.0.1:{dead_port}\r\n".encode())
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = connect_store(f"redis://127.0.0.1:{port}/0", None, 0.5, "t", 30)
    try:
        for attempt in (1, 2):
            with pytest.raises(StoreUnavailable, match="cannot reach"):
                await store._line.send(b"*1\r\n$4\r\nPING\r\n")
            assert connections == attempt
    finally:
        await store.aclose()
        server.close()
