"""The shared store's pipelined connection against a real Redis, and against servers that
hang or answer garbage: replies reach their own callers, in bursts that share writes; an
error reply fails one command; a lost connection or a missed deadline fails a batch,
promptly, and the next batch connects afresh."""

from __future__ import annotations

import asyncio
import gc
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from gptomni_relay.core.errors import AllBusy, AllCoolingDown
from gptomni_relay.core.shared_store import Candidate, SharedStore
from gptomni_relay.core.store_link import StoreUnavailable, encode_bulk, encode_command
from gptomni_relay.infra.redis_connection import Endpoint, connect_store
from gptomni_relay.settings import RelaySettings
from gptomni_relay.state import ConfigurationError, build_pool
from tests.redis_server import RedisServer
from tests.system_parts import require_binary

TIMEOUT = 0.5


def store_at(url: str, prefix: str = "t") -> SharedStore:
    return connect_store(url, None, TIMEOUT, prefix, lease_seconds=30)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[SharedStore]:
    shared = store_at(redis_server.url)
    yield shared
    await shared.aclose()


def command(*parts: str | int) -> bytes:
    return encode_command(len(parts), encode_bulk(*parts))


async def test_a_burst_shares_writes_and_every_caller_gets_its_own_reply(store: SharedStore) -> None:
    line = store._line
    replies = await asyncio.gather(*(line.send(command("ECHO", f"caller-{i}")) for i in range(300)))
    assert replies == [f"caller-{i}" for i in range(300)]
    assert line.batches_sent == 1  # sent in one event-loop turn: written together


async def test_an_error_reply_fails_only_its_own_command(store: SharedStore, redis_server: RedisServer) -> None:
    redis_server.client().set("not-a-number", "x")
    line = store._line
    before, wrong, after = line.send(command("ECHO", "a")), line.send(command("INCR", "not-a-number")), \
        line.send(command("ECHO", "b"))
    assert await before == "a" and await after == "b"
    with pytest.raises(StoreUnavailable, match="not an integer"):
        await wrong
    assert line.batches_sent == 1


async def test_a_caller_that_stops_waiting_leaves_the_replies_in_order(store: SharedStore,
                                                                      redis_server: RedisServer) -> None:
    line = store._line
    assert await line.send(command("PING")) == "PONG"  # connected: the next send is written at the turn's end
    written = line.batches_sent
    first = line.send(command("INCR", "abandoned"))
    for _ in range(100):  # bounded: the flush is the next event-loop turn
        if line.batches_sent > written:
            break
        await asyncio.sleep(0)
    assert line.batches_sent == written + 1 and line._link.waiting  # on the wire, its reply not read yet
    first.cancel()  # the caller stops waiting after the command was written
    assert await line.send(command("ECHO", "second")) == "second"  # the INCR's reply went to nobody
    assert await line.send(command("ECHO", "third")) == "third"
    assert redis_server.client().get("abandoned") == "1"  # it ran, once


async def test_acquire_works_after_the_script_cache_is_flushed(store: SharedStore, redis_server: RedisServer) -> None:
    prepared = store.prepare([Candidate("c", 1, 1, "fp")])
    assert await store.acquire(prepared, frozenset(), "r:1", 0) == 0
    redis_server.client().script_flush()
    assert isinstance(await store.acquire(prepared, frozenset(), "r:2", 0), AllBusy)  # EVAL, then cached
    assert redis_server.client().script_exists(_sha(store))[0]
    store.release(store.lease_key("c"), "r:1")
    assert await store.acquire(prepared, frozenset(), "r:3", 0) == 0


def _sha(store: SharedStore) -> str:
    return store._acquire.by_sha.split(b"\r\n")[3].decode()


async def test_a_stopped_store_fails_commands_within_the_deadline_and_a_restarted_one_answers(
        store: SharedStore, redis_server: RedisServer) -> None:
    line = store._line
    assert await line.send(command("PING")) == "PONG"
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await line.send(command("PING"))
    assert time.monotonic() - started < TIMEOUT + 0.5
    redis_server.start()
    # The first batch after the restart connects afresh: the failed one dropped the old connection.
    assert await line.send(command("PING")) == "PONG"


async def _serve(handler) -> tuple[asyncio.Server, str]:  # noqa: ANN001
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("behaviour", ["hangs", "stalls", "garbage", "closes", "floods", "floods_array", "chatters"])
async def test_a_misbehaving_store_fails_each_command_promptly(behaviour: str) -> None:
    """hangs: never answers; stalls: answers the greeting, then nothing; garbage: not RESP;
    closes: hangs up; floods: a reply without end (a string, an array); chatters: a reply
    nobody asked for (it could only be taken for a later command's)."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        greeted = False
        try:
            while await reader.read(65536):
                if not greeted and behaviour in ("stalls", "floods", "chatters"):
                    greeted = True
                    writer.write(b"+OK\r\n")  # CLIENT SETNAME
                elif behaviour == "garbage":
                    writer.write(b"%not-resp\x00\xff\r\n" * 1000)
                elif behaviour == "closes":
                    return
                elif behaviour in ("floods", "floods_array"):
                    # 10 MB of one reply that never ends: past the bound, well within the deadline
                    writer.write(b"$999999999\r\n" if behaviour == "floods" else b"*999999999\r\n")
                    for _ in range(10):
                        writer.write(b"x" * 1024 * 1024 if behaviour == "floods" else b":1\r\n" * 256 * 1024)
                        await writer.drain()
                elif behaviour == "chatters":
                    writer.write(b"+PONG\r\n+PONG\r\n")
        except ConnectionError:
            pass
        finally:
            writer.close()

    server, url = await _serve(handler)
    shared = store_at(url)
    try:
        for attempt in range(3):
            started = time.monotonic()
            if behaviour == "chatters":  # the first PONG is the reply; the second, unasked, ends the link
                assert await shared._line.send(command("PING")) == "PONG"
                await asyncio.sleep(0.05)
            else:
                with pytest.raises(StoreUnavailable):
                    await shared._line.send(command("PING"))
            assert time.monotonic() - started < TIMEOUT + 0.5, attempt
        assert connections == 3  # every failure dropped its connection; the next command made a new one
        started = time.monotonic()
        gc.collect()  # nothing huge was built meanwhile (hiredis sizes an array by its header)
        assert time.monotonic() - started < 0.5
    finally:
        await shared.aclose()
        server.close()


@pytest.mark.parametrize("first_connection", ["chatters after the greeting", "is a demoted primary"])
async def test_a_connection_that_went_wrong_is_replaced_at_the_next_command(first_connection: str) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        await reader.read(65536)  # CLIENT SETNAME
        writer.write(b"+OK\r\n+UNASKED\r\n" if first and first_connection.startswith("chatters") else b"+OK\r\n")
        while await reader.read(65536):
            if first and first_connection.startswith("is a demoted"):
                writer.write(b"-READONLY You can't write against a read only replica.\r\n")
            else:
                writer.write(b"+PONG\r\n")
        writer.close()

    server, url = await _serve(handler)
    shared = store_at(url)
    try:
        with pytest.raises(StoreUnavailable):
            await shared._line.send(command("PING"))
        assert await shared._line.send(command("PING")) == "PONG"
        assert connections == 2
    finally:
        await shared.aclose()
        server.close()


def test_tls_options_are_honoured_or_refused() -> None:
    strict = Endpoint.from_url("rediss://store.example:6380/0").tls
    assert strict is not None and strict.check_hostname and strict.verify_mode == ssl.CERT_REQUIRED
    lax = Endpoint.from_url("rediss://10.0.0.7:6380/0?ssl_check_hostname=false&ssl_cert_reqs=optional").tls
    assert lax is not None and not lax.check_hostname and lax.verify_mode == ssl.CERT_OPTIONAL
    off = Endpoint.from_url("rediss://store.example/0?ssl_cert_reqs=none").tls
    assert off is not None and off.verify_mode == ssl.CERT_NONE
    with pytest.raises(ValueError, match="ssl_min_version"):
        Endpoint.from_url("rediss://store.example/0?ssl_min_version=3")
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        Endpoint.from_url("rediss://store.example/0?ssl_cert_reqs=sometimes")


async def test_a_cooldown_written_by_an_older_relay_still_holds(store: SharedStore, redis_server: RedisServer) -> None:
    redis_server.client().set(store._key("cooling", "c"), "1", px=60_000)  # the strike count, as before
    refused = await store.acquire(store.prepare([Candidate("c", 1, 1, "fp")]), frozenset(), "r:1", 0)
    assert isinstance(refused, AllCoolingDown) and refused.retry_after > 50


async def test_acquire_with_more_credentials_than_lua_can_unpack(store: SharedStore) -> None:
    candidates = [Candidate(f"c{i}", 1, 1, "fp") for i in range(8_200)]
    assert await store.acquire(store.prepare(candidates), frozenset(), "r:1", 0) == 0


async def test_a_unix_socket_a_database_and_a_password(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    binary = require_binary("redis-server", "20-redis.sh")
    process = subprocess.Popen([str(binary), "--port", "0", "--unixsocket", str(socket_path), "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "s3cret"],
                               stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if socket_path.exists():
                break
            await asyncio.sleep(0.05)
        wrong = store_at(f"unix://{socket_path}?db=3&password=wrong")
        with pytest.raises(StoreUnavailable, match="WRONGPASS|invalid"):
            await wrong._line.send(command("PING"))
        await wrong.aclose()
        shared = connect_store(f"unix://{socket_path}?db=3", "s3cret", TIMEOUT, "t", lease_seconds=30)
        try:
            await shared._line.send(command("SET", "where", "db3"))
            assert await shared._line.send(command("CLIENT", "GETNAME")) == "gptomni-relay"
            assert await shared._line.send(command("GET", "where")) == "db3"
        finally:
            await shared.aclose()
        with redis.Redis(unix_socket_path=str(socket_path), password="s3cret", db=3) as check:
            assert check.get("where") == b"db3"
        assert "s3cret" not in repr(Endpoint.from_url(f"unix://{socket_path}", "s3cret"))
    finally:
        process.terminate()
        process.wait(10)


async def test_closing_fails_what_is_queued_and_refuses_what_comes_after(store: SharedStore) -> None:
    line = store._line
    queued = [line.send(command("ECHO", str(i))) for i in range(5)]
    await store.aclose()
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    with pytest.raises(StoreUnavailable, match="closed"):
        await line.send(command("PING"))


def test_a_tls_option_the_relay_cannot_honour_is_a_configuration_error() -> None:
    settings = RelaySettings(redis_url="rediss://:hunter2-secret@store.example/0?ssl_min_version=3")
    with pytest.raises(ConfigurationError, match="GPTOMNI_REDIS_URL: unsupported TLS options") as refused:
        build_pool(settings)
    assert "hunter2" not in str(refused.value)
