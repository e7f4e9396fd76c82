"""Clients as an attacker would be: huge or endless headers, a trickle of bytes, a body
that never ends, many unfinished requests at once. The relay answers 431/408 or closes,
within its limits, and holds no more memory than the limits allow."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from gptomni_relay.app import create_app
from gptomni_relay.edge.http_guard import GuardedHttpProtocol
from gptomni_relay.settings import DEMO_API_KEY, RelaySettings
from gptomni_relay.simulator import Behaviour, SimulatorState
from tests.bystander import Bystander
from tests.harness import Harness, sample_value
from tests.polling import wait_until
from tests.processes import RelayProcess, relay_process

REQUEST_LINE = b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\n"


@contextmanager
def connection(relay: Harness, timeout: float = 5.0) -> Iterator[socket.socket]:
    sock = socket.create_connection((relay.relay_server.host, relay.relay_server.port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket timeout)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server refused and closed mid-send: what we are testing


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_a_header_over_the_limit_gets_431(relay: Harness) -> None:
    with connection(relay) as sock:
        send_quietly(sock, REQUEST_LINE + b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n")
        reply = read_reply(sock)
    assert status_of(reply) == 431 and b"connection: close" in reply.lower()


def test_too_many_headers_get_431(relay: Harness) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    with connection(relay) as sock:
        send_quietly(sock, REQUEST_LINE + headers + b"\r\n")
        assert status_of(read_reply(sock)) == 431


def test_headers_at_the_limit_are_served(relay: Harness) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(90))  # ~19 KB, 92 headers
    body = b'{"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]}'
    with connection(relay) as sock:
        sock.sendall(REQUEST_LINE + headers + b"Authorization: Bearer " + relay.api_key.encode()
                     + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body)
        reply = read_reply(sock)
    assert status_of(reply) == 200, reply[:200]


def test_a_trickle_of_header_lines_is_cut_off(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(header_timeout_seconds=1.0)
    started = time.monotonic()
    with connection(relay) as sock:
        sock.sendall(REQUEST_LINE)
        for i in range(20):  # one header line every 0.25 s would take 5 s
            try:
                sock.sendall(b"X-Slow-%d: x\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.25)
        reply = read_reply(sock)
    assert status_of(reply) == 408
    assert time.monotonic() - started < 4


def test_a_silent_connection_is_closed(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(header_timeout_seconds=0.5)
    with connection(relay) as sock:
        started = time.monotonic()
        assert read_reply(sock) == b""  # closed without a word
        assert time.monotonic() - started < 3


def test_a_body_that_never_ends_is_cut_off(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(body_timeout_seconds=1.0)
    with connection(relay) as sock:
        sock.sendall(REQUEST_LINE + b"Authorization: Bearer " + relay.api_key.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":")
        started = time.monotonic()
        reply = read_reply(sock)
    assert status_of(reply) == 408
    assert time.monotonic() - started < 4


def test_keep_alive_still_serves_request_after_request(relay: Harness) -> None:
    with connection(relay) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            reply = b""
            while not reply.endswith(b'{"status":"ok"}'):  # bounded by the socket timeout
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
            assert status_of(reply) == 200


@pytest.mark.parametrize("size", [40 * 1024, 100 * 1024])
def test_a_big_header_in_one_write_gets_431(relay: Harness, size: int) -> None:
    with connection(relay) as sock:
        send_quietly(sock, b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        assert status_of(read_reply(sock)) == 431


def test_a_long_url_gets_431(relay: Harness) -> None:
    with connection(relay) as sock:
        send_quietly(sock, b"GET /healthz?" + b"q" * 40_000 + b" HTTP/1.1\r\nHost: relay\r\n\r\n")
        assert status_of(read_reply(sock)) == 431


def test_a_partial_request_behind_a_whole_one_is_timed_too(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(header_timeout_seconds=1.0, keep_alive_timeout_seconds=30)
    with connection(relay, timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\nGET /healthz HTTP/1.1\r\nX-Slow: ")
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in reply
    assert time.monotonic() - started < 5  # not the 30 s keep-alive


def test_no_stray_status_line_after_an_answer_sent_before_the_body(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(body_timeout_seconds=1.0)
    with connection(relay, timeout=5) as sock:
        # A wrong key is answered (401) without reading the announced body, which never comes.
        sock.sendall(REQUEST_LINE + b"Authorization: Bearer wrong\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        reply = read_reply(sock)
    assert status_of(reply) == 401 and reply.count(b"HTTP/1.1") == 1


def test_endless_chunked_trailers_are_cut_off(relay_process_against_demo) -> None:  # noqa: ANN001
    relay = relay_process_against_demo
    baseline_mb = relay.peak_memory_mb()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        send_quietly(sock, REQUEST_LINE + b"Authorization: Bearer " + DEMO_API_KEY.encode()
                     + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ")
        for _ in range(200):  # 50 MB of one trailer, if nothing stopped it
            send_quietly(sock, b"t" * (256 * 1024))
        reply = read_reply(sock)
    assert status_of(reply) in (408, 413) or reply == b""
    grown_mb = relay.peak_memory_mb() - baseline_mb
    assert grown_mb < 16, f"the relay's peak memory grew by {grown_mb:.0f} MB"


@pytest.fixture
def relay_process_against_demo() -> Iterator[RelayProcess]:
    with relay_process("--demo") as relay:
        yield relay


@pytest.mark.timeout(120)
def test_many_unfinished_requests_hold_little_memory(relay_process_against_demo: RelayProcess) -> None:
    relay = relay_process_against_demo
    baseline_mb = relay.peak_memory_mb()
    chunk = b"X-Fill: " + b"a" * (256 * 1024)
    socks = []
    try:
        for _ in range(30):  # each tries to send 4 MB of headers that never end
            sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
            socks.append(sock)
            send_quietly(sock, REQUEST_LINE)
            for _ in range(16):
                send_quietly(sock, chunk)
        replies = [read_reply(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert all(status_of(reply) == 431 for reply in replies)
    grown_mb = relay.peak_memory_mb() - baseline_mb
    assert grown_mb < 40, f"peak memory grew by {grown_mb:.0f} MB for 30 unfinished requests"


@pytest.mark.timeout(120)
def test_pipelined_requests_are_answered_one_at_a_time_in_bounded_memory(relay_process_against_demo) -> None:  # noqa: ANN001
    # 100,000 GET /healthz written back to back (3.3 MB) while the answers are read slowly:
    # the relay parses the next request only once the one before is answered.
    relay: RelayProcess = relay_process_against_demo
    bystander = Bystander(relay.url)
    bystander.baseline()
    baseline_mb = relay.peak_memory_mb()
    payload = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n" * 100_000
    received = bytearray()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=0.5) as sock:
        stop_at = time.monotonic() + 6

        def read_slowly() -> None:
            while time.monotonic() < stop_at and len(received) < 4_000_000:
                try:
                    received.extend(sock.recv(4096))
                except TimeoutError:
                    pass
                time.sleep(0.005)

        reader = threading.Thread(target=read_slowly, daemon=True)
        with bystander:
            reader.start()
            sent = 0
            while sent < len(payload) and time.monotonic() < stop_at:
                try:
                    sent += sock.send(payload[sent:sent + 65536])
                except TimeoutError:
                    pass  # the relay stopped reading: back-pressure, what we are testing
            reader.join(30)
    answers = bytes(received).count(b"HTTP/1.1 200 OK")
    assert answers > 100, f"only {answers} pipelined requests were answered"
    grown_mb = relay.peak_memory_mb() - baseline_mb
    assert grown_mb < 16, f"the relay's peak memory grew by {grown_mb:.0f} MB for {sent} bytes of pipelined requests"
    bystander.assert_not_starved()


def test_pipelined_requests_are_all_answered_in_order(relay: Harness) -> None:
    paths = [b"/healthz", b"/readyz", b"/nowhere", b"/healthz"]
    body = b'{"model": "gptomni", "messages": [{"role": "user", "content": "pipelined"}]}'
    chat = (REQUEST_LINE + b"Authorization: Bearer " + relay.api_key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    requests = [b"GET %s HTTP/1.1\r\nHost: relay\r\n\r\n" % path for path in paths[:2]] + [chat] + [
        b"GET %s HTTP/1.1\r\nHost: relay\r\n\r\n" % path for path in paths[2:]]
    with connection(relay) as sock:
        sock.sendall(b"".join(requests) + b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        reply = read_reply(sock)
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]
    assert statuses == [200, 200, 200, 404, 200, 200], reply[:2000]
    assert b"You said: pipelined" in reply


ONE_READ = 256 * 1024  # what one read of the event loop takes in (asyncio's and uvloop's)


@dataclass
class HeldStream:
    """A streamed chat answer GPT-Omni holds open after its first piece, read on a raw socket
    by a thread; the relay pings every 50 ms, and each ping is one wait for a hang-up."""

    sock: socket.socket
    received: bytearray
    closed: threading.Event
    protocol: GuardedHttpProtocol
    release: Callable[[], None]

    def pings(self) -> int:
        return self.received.count(b": ping")

    def wait_for_pings(self, count: int) -> None:
        start = self.pings()
        wait_until(lambda: self.pings() - start >= count, what=f"{count} pings")


@contextmanager
def held_stream(make_relay: Callable[..., Harness]) -> Iterator[HeldStream]:
    hold = asyncio.Event()
    relay = make_relay(sim=SimulatorState(default=Behaviour(hold=hold)), sse_ping_seconds=0.05)
    connections = relay.relay_server.server.server_state.connections

    async def guard() -> GuardedHttpProtocol:
        (protocol,) = [c for c in connections if isinstance(c, GuardedHttpProtocol)]
        return protocol

    body = json.dumps({"model": "gptomni", "stream": True,
                       "messages": [{"role": "user", "content": "a long answer"}]}).encode()
    received = bytearray()
    closed = threading.Event()
    with connection(relay, timeout=0.5) as sock:
        stop_at = time.monotonic() + 60

        def read_all() -> None:
            while time.monotonic() < stop_at:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                received.extend(chunk)
            closed.set()

        sock.sendall(REQUEST_LINE + b"Authorization: Bearer " + relay.api_key.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        try:
            wait_until(lambda: b"data: " in received, what="the stream's first piece")
            yield HeldStream(sock, received, closed, relay.on_loop(guard()),
                             lambda: relay.servers.loop.call_soon_threadsafe(hold.set))
        finally:
            relay.servers.loop.call_soon_threadsafe(hold.set)
            closed.wait(30)
            reader.join(5)


@pytest.mark.timeout(90)
def test_a_client_writing_during_a_long_stream_makes_the_relay_hold_no_more(make_relay) -> None:  # noqa: ANN001
    # uvicorn resumes reading each time the app waits for a hang-up (once per SSE ping), and
    # each resume let one more read in: megabytes pipelined during a long answer piled up.
    with held_stream(make_relay) as stream:
        max_header_bytes = RelaySettings.model_fields["max_header_bytes"].default
        # The client writes garbage until the relay has waited for a hang-up (a ping, a
        # resume) 40 times, at most 16 MB, at most 20 s.
        pings_before = stream.pings()
        garbage = b"x" * 65536
        sent, peak = 0, 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sent < 16 * 1024 * 1024 and stream.pings() - pings_before < 40:
            try:
                sent += stream.sock.send(garbage)
            except TimeoutError:
                pass  # the relay stopped reading: back-pressure
            peak = max(peak, stream.protocol.held_bytes)
        resumes = stream.pings() - pings_before
        stream.release()
        assert stream.closed.wait(30), "the connection stayed open after the answer"
    assert resumes >= 2 and sent > 2 * ONE_READ, (resumes, sent)  # the relay was given the chance
    assert peak <= max_header_bytes + ONE_READ, (
        f"the relay held {peak} bytes sent during one answer ({sent} sent, {resumes} pings)")
    # The answer was written to its end, then the connection closed; what the client sent
    # ahead was never parsed. (Closed with unread bytes, the kernel resets the connection,
    # which may cost the client the answer's unread tail: the client's doing.)
    protocol = stream.protocol
    assert protocol.cycle.response_complete and protocol.transport.is_closing()
    assert protocol.held_bytes == 0 and b"HTTP/1.1 400" not in bytes(stream.received)


def test_a_request_pipelined_in_pieces_behind_a_long_stream_is_answered_after_it(make_relay) -> None:  # noqa: ANN001
    # Within the bound, what arrives while an answer runs is kept across uvicorn's resumes, in order.
    with held_stream(make_relay) as stream:
        pieces = [b"GET /healthz HTTP/1.1\r\n", b"Host: relay\r\n", b"Connection: close\r\n\r\n"]
        for piece in pieces:
            stream.sock.sendall(piece)
            stream.wait_for_pings(2)  # the relay waited for a hang-up, and read, since
        assert stream.protocol.held_bytes == len(b"".join(pieces))
        stream.release()
        assert stream.closed.wait(30), "the connection stayed open after the pipelined request"
    answers = bytes(stream.received)
    assert answers.index(b"data: [DONE]") < answers.index(b"HTTP/1.1 200 OK", 1), answers[-400:]
    assert answers.endswith(b'{"status":"ok"}'), answers[-400:]


ONE = b"1," * 499_999 + b"1"  # 500,000 values in under 1 MB
CHAT, RESPONSES, COMPLETIONS = "/v1/chat/completions", "/v1/responses", "/v1/completions"
KEYS = b",".join(b'"k%d": [1]' % i for i in range(40_000))  # 80,000 values
_M = b'{"model": "gptomni", '

# Every body-taking route, and each of its arrays a client could make long (request_bounds.py).
COSTLY_BODIES = [
    (CHAT, _M + b'"messages": [' + ONE + b"]}", "messages"),
    (CHAT, _M + b'"messages": [{"role": "user", "content": [' + ONE + b"]}]}", "messages[0].content"),
    (CHAT, _M + b'"messages": [' + b",".join([b'{"role": "user", "content": [1, 1, 1]}'] * 2000)
     + b'], "x": {' + KEYS + b"}}", None),
    (CHAT, _M + b'"messages": [{"role": "user", "content": "hi"}], "stop": [' + ONE + b"]}", "stop"),
    (CHAT, _M + b'"messages": [{"role": "user", "content": "hi"}], "tools": [' + ONE + b"]}", "tools"),
    (RESPONSES, _M + b'"input": [' + ONE + b"]}", "input"),
    (RESPONSES, _M + b'"input": [{"role": "user", "content": [' + ONE + b"]}]}", "input[0].content"),
    (RESPONSES, _M + b'"input": [{"type": "function_call_output", "call_id": "c", "output": [' + ONE + b"]}]}",
     "input[0].output"),
    (RESPONSES, _M + b'"input": "hi", "tools": [' + ONE + b"]}", "tools"),
    (RESPONSES, _M + b'"input": "hi", "metadata": {' + KEYS + b"}}", None),
    (COMPLETIONS, _M + b'"prompt": [' + ONE + b"]}", "prompt"),
    (COMPLETIONS, _M + b'"prompt": "hi", "stop": [' + ONE + b"]}", "stop"),
    (COMPLETIONS, _M + b'"prompt": "hi", "x": ' + b"[" * 200 + b"]" * 200 + b"}", None),
]


def test_every_body_taking_route_is_in_the_costly_bodies() -> None:
    # A new POST route must be added to COSTLY_BODIES (and read its body through
    # request_reading.validated with its RequestBounds).
    app = create_app(RelaySettings(demo=True))
    posted = {route.path for route in app.routes if "POST" in (getattr(route, "methods", None) or ())}
    assert posted == {path for path, _, _ in COSTLY_BODIES}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("path", "body", "param"), COSTLY_BODIES,
                         ids=[f"{path}:{param}" for path, _, param in COSTLY_BODIES])
def test_a_cheap_body_that_is_costly_to_validate_is_refused_cheaply(relay_process_against_demo, path: str,  # noqa: ANN001
                                                                    body: bytes, param: str | None) -> None:
    relay: RelayProcess = relay_process_against_demo
    assert len(body) < 1024 * 1024
    bystander = Bystander(relay.url)
    bystander.baseline()
    baseline_mb = relay.peak_memory_mb()
    headers = {"Authorization": f"Bearer {DEMO_API_KEY}", "Content-Type": "application/json"}
    with bystander, httpx.Client(base_url=relay.url, headers=headers, timeout=60) as http:
        http.post(path, content=b"{}")  # the route's first use is not measured
        cpu_before = relay.cpu_seconds()
        for _ in range(3):
            response = http.post(path, content=body)
            assert response.status_code == 400, response.text[:300]
            error = response.json()["error"]
            assert error["code"] in {"too_many_items", "too_many_values", "too_deeply_nested"}, error
            if param is not None:
                assert error["param"] == param
        cpu_ms = (relay.cpu_seconds() - cpu_before) / 3 * 1000
    # Parsing 1 MB of JSON is the floor (~10-20 ms); validating 500,000 values took seconds.
    assert cpu_ms < 150, f"the relay spent {cpu_ms:.0f} ms of CPU on one such request"
    grown_mb = relay.peak_memory_mb() - baseline_mb
    assert grown_mb < 48, f"the relay's peak memory grew by {grown_mb:.0f} MB"
    bystander.assert_not_starved()


def _count(number: int) -> str:
    return f"{number:,}"


def test_the_docs_state_the_bounds_the_code_holds() -> None:
    # request_bounds.py is the one place the counts are written; the docs that repeat them
    # for readers must say what the code does (they once kept 4096 / 1024 after a lowering).
    from pathlib import Path

    from gptomni_relay.core.shaping import MAX_TOOLS
    from gptomni_relay.openai_api.request_bounds import CHAT_COMPLETIONS_BOUNDS as CHAT_B
    from gptomni_relay.openai_api.request_bounds import COMPLETIONS_BOUNDS as LEGACY_B
    from gptomni_relay.openai_api.request_bounds import (
        MAX_SCHEMA_NODES,
        MAX_SCHEMA_PATTERN_CHARS,
        MAX_SCHEMA_PATTERNS,
    )
    from gptomni_relay.openai_api.request_bounds import RESPONSES_BOUNDS as RESP_B

    docs = Path(__file__).resolve().parent.parent / "docs"
    chat, resp, legacy = CHAT_B.array_caps, RESP_B.array_caps, LEGACY_B.array_caps
    assert resp["input[].content"] == resp["input[].output"]  # the docs give them as one count
    assert chat["tools"] == chat["functions"] == chat["messages[].tool_calls"] == MAX_TOOLS
    assert CHAT_B.max_array_items == RESP_B.max_array_items == LEGACY_B.max_array_items
    assert CHAT_B.max_depth == RESP_B.max_depth == LEGACY_B.max_depth
    assert CHAT_B.max_values == RESP_B.max_values == LEGACY_B.max_values
    security = " ".join((docs / "security.md").read_text().split())
    assert (f"Chat: {chat['messages']} `messages`, {chat['messages[].content']} `content` parts and "
            f"{MAX_TOOLS} `tool_calls` a message, {MAX_TOOLS} `tools` / `functions`, {chat['stop']} `stop`. "
            f"Responses: {resp['input']} `input` items, {resp['input[].content']} `content` / `output` parts an "
            f"item, {resp['tools']} `tools` of any kind (function tools then at most {MAX_TOOLS}, as in chat). "
            f"Legacy completions: {legacy['prompt']} `prompt` entries, {legacy['stop']} `stop`. "
            f"Every route: {CHAT_B.max_array_items} items in any other array, {CHAT_B.max_depth} levels of "
            f"nesting") in security
    assert f"{_count(CHAT_B.max_values)} array items and object members in all" in security
    responses = " ".join((docs / "responses.md").read_text().split())
    assert (f"at most {resp['input']} input items, {resp['input[].content']} content or output parts per item, "
            f"{resp['tools']} tools in `tools` (of which at most {MAX_TOOLS} function tools, as in chat), "
            f"{CHAT_B.max_array_items} items in any other array, {RESP_B.max_depth} levels of nesting and "
            f"{_count(RESP_B.max_values)} values in all") in responses
    schemas = (f"{MAX_SCHEMA_NODES} objects and arrays, {MAX_SCHEMA_PATTERNS} regular expressions")
    for doc in (security, responses, " ".join((docs / "prompt-format.md").read_text().split())):
        assert schemas in doc and f"{_count(MAX_SCHEMA_PATTERN_CHARS)} characters of them" in doc


# --- the body budget: what every request body being read holds, together -------------------

BODY_BUDGET = 4 * 1024 * 1024
DECLARED = 1_000_000  # four fit the budget, with room left for small bodies
CHAT_BODY = b'{"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
def relay_with_a_small_body_budget() -> Iterator[RelayProcess]:
    with relay_process("--demo", env={"GPTOMNI_MAX_BUFFERED_BODY_BYTES": str(BODY_BUDGET)}) as relay:
        yield relay


def buffered_body_bytes(relay: RelayProcess) -> float:
    return sample_value(httpx.get(f"{relay.metrics_url}/metrics", timeout=10).text, "gptomni_buffered_body_bytes")


def stalled_body(relay: RelayProcess) -> socket.socket:
    """A connection that announces a DECLARED-byte body, sends all of it but the last byte, and stalls."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    send_quietly(sock, REQUEST_LINE + b"Authorization: Bearer " + DEMO_API_KEY.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % DECLARED
                 + b" " * (DECLARED - 1))
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response with a Content-Length, on a connection that stays open (bounded by the socket timeout)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {received[:200]!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict((name.strip().lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines[1:]))
    while len(body) < int(headers[b"content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed inside a response"
        body += chunk
    return status_of(lines[0]), headers, body


def hold_the_budget(relay: RelayProcess, socks: list[socket.socket]) -> None:
    """Four stalled bodies, each admitted: the budget holds what arrived of them."""
    for count in range(1, 5):
        socks.append(stalled_body(relay))
        wait_until(lambda count=count: buffered_body_bytes(relay) == count * (DECLARED - 1),
                   what=f"{count} stalled bodies held in the budget")


def assert_server_busy(sock: socket.socket) -> None:
    status, headers, body = read_response(sock)
    assert status == 503, body[:300]
    assert headers[b"retry-after"] == b"1"
    error = json.loads(body)["error"]
    assert error["code"] == "server_busy" and error["type"] == "api_error", error


@pytest.mark.timeout(120)
def test_stalled_bodies_hold_no_more_than_the_body_budget(relay_with_a_small_body_budget: RelayProcess) -> None:
    # 60 connections with a valid key each send a ~1 MB body but its last byte and stall: each
    # body was buffered whole until the body timeout (300 such held +325 MB for 30 s).
    relay = relay_with_a_small_body_budget
    bystander = Bystander(relay.url)
    bystander.baseline()
    baseline_mb = relay.peak_memory_mb()
    headers = {"Authorization": f"Bearer {DEMO_API_KEY}", "Content-Type": "application/json"}
    socks: list[socket.socket] = []
    try:
        with bystander, httpx.Client(base_url=relay.url, headers=headers, timeout=30) as http:
            hold_the_budget(relay, socks)
            for _ in range(56):  # each refused once it reaches what is left of the budget
                socks.append(stalled_body(relay))
                assert_server_busy(socks[-1])
            assert buffered_body_bytes(relay) == 4 * (DECLARED - 1)
            # A small body still fits what is left of the budget.
            response = http.post("/v1/chat/completions", content=CHAT_BODY)
            assert response.status_code == 200, response.text[:300]
        grown_mb = relay.peak_memory_mb() - baseline_mb
    finally:
        for sock in socks:
            sock.close()
    assert grown_mb < 16, f"the relay's peak memory grew by {grown_mb:.0f} MB for 60 stalled 1 MB bodies"
    bystander.assert_not_starved()
    # The clients gone, every byte of the budget is back: four stalled bodies fit again, a fifth does not.
    wait_until(lambda: buffered_body_bytes(relay) == 0, what="the budget released")
    socks = []
    try:
        hold_the_budget(relay, socks)
        socks.append(stalled_body(relay))
        assert_server_busy(socks[-1])
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: buffered_body_bytes(relay) == 0, what="the budget released")
    big = CHAT_BODY + b" " * (DECLARED - len(CHAT_BODY))  # JSON may end in whitespace
    response = httpx.post(f"{relay.url}/v1/chat/completions", content=big, headers=headers, timeout=30)
    assert response.status_code == 200, response.text[:300]


@pytest.mark.timeout(120)
def test_bodies_answered_before_they_are_read_are_not_kept(relay_process_against_demo: RelayProcess) -> None:
    # Without a key each ~1 MB body is answered 401 unread, and uvicorn kept what it had buffered of
    # it (64 KiB plus one read) until the body timeout: 300 such connections held +38 MB for 30 s.
    relay = relay_process_against_demo
    baseline_mb = relay.peak_memory_mb()
    socks: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
            socks.append(sock)
            send_quietly(sock, REQUEST_LINE + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % DECLARED
                         + b" " * (DECLARED - 1))
            status, _, _ = read_response(sock)
            assert status == 401
        grown_mb = relay.peak_memory_mb() - baseline_mb
    finally:
        for sock in socks:
            sock.close()
    assert grown_mb < 10, f"the relay's peak memory grew by {grown_mb:.0f} MB for 200 unread 1 MB bodies"


def _pattern_flood(salt: str) -> list[dict]:
    """An ordinary tool, then 25 of 500 `patternProperties` each (each schema under the
    32 KB a schema may be; ~800 KB in all): 3 s of meta-schema checks a request, before."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z0-9-]+$"}}}}}]
    for t in range(25):
        keys = {f"^{salt}t{t}k{i}_[a-z0-9]{{1,8}}(?:-[A-Za-z]+)*_{'x' * 18}$": {} for i in range(500)}
        tools.append({"type": "function", "function": {"name": f"f{t}",
                                                        "parameters": {"type": "object", "patternProperties": keys}}})
    return tools


def _sub_schemas(count: int) -> dict:
    """`count` empty sub-schemas (~0.1 ms of meta-schema check each), 1000 an array."""
    return {"allOf": [{"allOf": [{} for _ in range(1000)]} for _ in range(count // 1000)]}


_HI = [{"role": "user", "content": "hi"}]
# (path, body for a salt, the param named). Each request's schemas are new (the salt):
# verdicts are remembered, and an attacker would not send the same schema twice.
COSTLY_SCHEMAS: list[tuple[str, Callable[[str], dict], str]] = [
    (CHAT, lambda salt: {"model": "gptomni", "messages": _HI, "tools": _pattern_flood(salt)},
     "tools[1].function.parameters"),
    (RESPONSES, lambda salt: {"model": "gptomni", "input": "hi",
                              "tools": [{"type": "function", **tool["function"]} for tool in _pattern_flood(salt)]},
     "tools[1].parameters"),
    (CHAT, lambda salt: {"model": "gptomni", "messages": _HI, "response_format": {
        "type": "json_schema", "json_schema": {"name": salt, "schema": {"$comment": salt, **_sub_schemas(3000)}}}},
     "response_format.json_schema.schema"),
    (RESPONSES, lambda salt: {"model": "gptomni", "input": "hi", "text": {"format": {
        "type": "json_schema", "name": salt, "schema": {"$comment": salt, **_sub_schemas(3000)}}}},
     "text.format.schema"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("path", "make_body", "param"), COSTLY_SCHEMAS,
                         ids=[f"{path}:{param}" for path, _, param in COSTLY_SCHEMAS])
def test_schemas_costly_to_check_are_refused_cheaply(relay_process_against_demo, path: str,  # noqa: ANN001
                                                     make_body: Callable[[str], dict], param: str) -> None:
    relay: RelayProcess = relay_process_against_demo
    bystander = Bystander(relay.url)
    bystander.baseline()
    headers = {"Authorization": f"Bearer {DEMO_API_KEY}", "Content-Type": "application/json"}
    bodies = [json.dumps(make_body(f"r{n}")).encode() for n in range(3)]
    assert all(len(body) < 1024 * 1024 for body in bodies)
    with bystander, httpx.Client(base_url=relay.url, headers=headers, timeout=60) as http:
        http.post(path, content=b"{}")  # the route's first use is not measured
        cpu_before = relay.cpu_seconds()
        for body in bodies:
            response = http.post(path, content=body)
            assert response.status_code == 400, response.text[:300]
            error = response.json()["error"]
            assert error["code"] == "schema_too_complex" and error["param"] == param, error
            assert "2048 objects and arrays" in error["message"] or "256 regular expressions" in error["message"]
        cpu_ms = (relay.cpu_seconds() - cpu_before) / len(bodies) * 1000
    # Parsing the JSON is most of it; checking the 25 flooded schemas took ~3 s.
    assert cpu_ms < 150, f"the relay spent {cpu_ms:.0f} ms of CPU on one such request"
    bystander.assert_not_starved()


def _most_schema_work(salt: str, extra_node: bool = False) -> list[dict]:
    """Tools at every schema bound at once (request_bounds.py), in the costliest shape per
    object: 16 schemas of 128 objects and arrays, 256 patterns of 64 characters."""
    from gptomni_relay.openai_api.request_bounds import (
        MAX_SCHEMA_NODES,
        MAX_SCHEMA_PATTERN_CHARS,
        MAX_SCHEMA_PATTERNS,
    )

    tools, per_tool = 16, MAX_SCHEMA_NODES // 16
    patterns = MAX_SCHEMA_PATTERNS // tools
    length = MAX_SCHEMA_PATTERN_CHARS // MAX_SCHEMA_PATTERNS
    made = []
    for t in range(tools):
        items = [{"pattern": f"^{salt}{t:02d}{k:02d}".ljust(length - 1, "x") + "$"} for k in range(patterns)]
        items += [{} for _ in range(per_tool - 2 - patterns + (extra_node and t == tools - 1))]  # - root, allOf
        made.append({"type": "function", "function": {"name": f"f{t}", "parameters": {"allOf": items}}})
    return made


@pytest.mark.timeout(120)
def test_the_most_schema_work_a_request_may_ask_is_bounded(relay_process_against_demo) -> None:  # noqa: ANN001
    relay: RelayProcess = relay_process_against_demo
    headers = {"Authorization": f"Bearer {DEMO_API_KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=relay.url, headers=headers, timeout=60) as http:
        http.post(CHAT, content=b"{}")
        one_more = {"model": "gptomni", "messages": _HI, "tools": _most_schema_work("o", extra_node=True)}
        response = http.post(CHAT, json=one_more)
        assert response.status_code == 400, response.text[:300]
        assert response.json()["error"]["param"] == "tools[15].function.parameters"
        cpu_before = relay.cpu_seconds()
        for n in range(2):
            response = http.post(CHAT, json={"model": "gptomni", "messages": _HI, "tools": _most_schema_work(f"m{n}")})
            assert response.status_code == 200, response.text[:300]
        cpu_ms = (relay.cpu_seconds() - cpu_before) / 2 * 1000
    # ~0.3 s on a quiet machine: the meta-schema check of 2,048 sub-schemas, once per schema.
    assert cpu_ms < 1000, f"the relay spent {cpu_ms:.0f} ms of CPU on a request at the schema bounds"


def test_anchors_and_ids_are_resolved_in_linear_time() -> None:
    """Each anchor or `$id` lookup crawled the whole schema again: 600 were 1.3 s."""
    from gptomni_relay.core.shaping.schemas import schema_problem

    anchors = {"allOf": [{"$anchor": f"a{i}", "$ref": f"#a{i}"} for i in range(600)]}
    ids = {"allOf": [{"$id": f"http://x/{i}", "$ref": f"http://x/{i}"} for i in range(600)]}
    started = time.process_time()
    assert schema_problem(anchors) is None and schema_problem(ids) is None
    assert time.process_time() - started < 0.8
    assert "does not resolve" in (schema_problem({**anchors, "not": {"$ref": "#nowhere"}}) or "")
