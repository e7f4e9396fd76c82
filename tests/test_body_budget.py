"""The body budget (core/byte_budget.py): what every request body being read holds of
GPTOMNI_MAX_BUFFERED_BODY_BYTES, together. Holds grow chunk by chunk with what
arrives (never what a Content-Length only announces), and every byte comes back however the reading ends: parsed, refused, or
the client gone mid-body. (The process-level attack is in tests/test_hostile_clients.py.)"""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from gptomni_relay.core.byte_budget import ByteBudget
from gptomni_relay.core.errors import ServerBusy
from gptomni_relay.openai_api.errors import error_for
from gptomni_relay.settings import RelaySettings
from tests.harness import Harness
from tests.polling import wait_until

REQUEST_LINE = b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\n"


def test_holds_share_the_capacity_and_give_everything_back() -> None:
    budget = ByteBudget(100)
    with budget.hold() as first:
        first.cover(60)
        first.cover(40)  # already covered: nothing more held
        assert budget.reserved == 60
        with budget.hold() as second:
            second.cover(40)
            with pytest.raises(ServerBusy), budget.hold() as third:
                third.cover(1)
            assert budget.reserved == 100  # the refused hold took nothing
        assert budget.reserved == 60
        with pytest.raises(ServerBusy):
            first.cover(101)
        assert budget.reserved == 60 and first.held == 60
    assert budget.reserved == 0


def test_a_hold_is_given_back_when_its_block_fails() -> None:
    budget = ByteBudget(100)
    with pytest.raises(RuntimeError), budget.hold() as hold:
        hold.cover(70)
        raise RuntimeError("the client went away")
    assert budget.reserved == 0


def test_a_full_budget_is_a_503_server_busy_with_retry_after() -> None:
    error = error_for(ServerBusy("full"))
    assert (error.status, error.code, error.type) == (503, "server_busy", "api_error")
    assert error.headers("req_1")["Retry-After"] == "1"


def test_the_budget_must_fit_one_body_within_the_body_limit() -> None:
    with pytest.raises(ValidationError, match="GPTOMNI_MAX_BUFFERED_BODY_BYTES"):
        RelaySettings(max_body_bytes=2_000_000, max_buffered_body_bytes=1_000_000)
    assert RelaySettings(max_body_bytes=2_000_000, max_buffered_body_bytes=2_000_000).max_buffered_body_bytes == 2_000_000
    assert RelaySettings().max_buffered_body_bytes == 64 * 1024 * 1024


def _headers(relay: Harness, framing: bytes) -> bytes:
    return (REQUEST_LINE + b"Authorization: Bearer " + relay.api_key.encode()
            + b"\r\nContent-Type: application/json\r\n" + framing + b"\r\n\r\n")


def test_a_declared_body_holds_what_arrived_and_gives_it_back_on_a_hang_up(relay: Harness) -> None:
    budget = relay.state.body_budget
    with socket.create_connection((relay.relay_server.host, relay.relay_server.port), timeout=5) as sock:
        sock.sendall(_headers(relay, b"Content-Length: 200000") + b'{"model": ')
        wait_until(lambda: budget.reserved == len(b'{"model": '), what="what arrived held")
    wait_until(lambda: budget.reserved == 0, what="the hold given back after the hang-up")


def test_headers_alone_hold_nothing_of_the_budget(make_relay) -> None:  # noqa: ANN001
    # Announcing a body costs a client nothing: 64 header-only connections announcing 1 MiB
    # each held a budget that reserved announced lengths for the whole body timeout.
    relay: Harness = make_relay(max_body_bytes=100_000, max_buffered_body_bytes=100_000)
    address = (relay.relay_server.host, relay.relay_server.port)
    socks = [socket.create_connection(address, timeout=5) for _ in range(10)]
    try:
        for sock in socks:
            sock.sendall(_headers(relay, b"Content-Length: 90000"))
        response = relay.http().post("/v1/chat/completions", json={
            "model": "gptomni", "messages": [{"role": "user", "content": "x" * 90_000}]})
        assert response.status_code == 200, response.text[:300]
        assert relay.state.body_budget.reserved == 0
    finally:
        for sock in socks:
            sock.close()


def test_a_chunked_body_is_held_as_it_comes_and_given_back_on_a_hang_up(relay: Harness) -> None:
    budget = relay.state.body_budget
    with socket.create_connection((relay.relay_server.host, relay.relay_server.port), timeout=5) as sock:
        sock.sendall(_headers(relay, b"Transfer-Encoding: chunked"))
        sent = 0
        for _ in range(3):
            sock.sendall(b"%x\r\n%s\r\n" % (30_000, b" " * 30_000))
            sent += 30_000
            wait_until(lambda sent=sent: budget.reserved == sent, what=f"{sent} bytes held")
    wait_until(lambda: budget.reserved == 0, what="the hold given back after the hang-up")


def test_a_chunked_body_past_the_budget_is_refused_mid_body(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(max_body_bytes=100_000, max_buffered_body_bytes=100_000)
    budget = relay.state.body_budget
    address = (relay.relay_server.host, relay.relay_server.port)
    with socket.create_connection(address, timeout=5) as holder, socket.create_connection(address, timeout=5) as late:
        holder.sendall(_headers(relay, b"Content-Length: 80000") + b"{" + b" " * 79_998)  # all but its last byte
        wait_until(lambda: budget.reserved == 79_999, what="the first body held")
        late.sendall(_headers(relay, b"Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (10_000, b" " * 10_000))
        wait_until(lambda: budget.reserved == 89_999, what="the chunked body's first chunk held")
        late.sendall(b"%x\r\n%s\r\n" % (30_000, b" " * 30_000))  # past the budget
        reply = b""
        while b"server_busy" not in reply:  # bounded by the socket timeout
            chunk = late.recv(65536)
            assert chunk, reply[:300]
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 503") and b"retry-after: 1\r\n" in reply, reply[:300]
        assert budget.reserved == 79_999  # what the refused body held is back
    wait_until(lambda: budget.reserved == 0, what="the budget released")
    response = relay.http().post("/v1/chat/completions", json={
        "model": "gptomni", "messages": [{"role": "user", "content": "x" * 90_000}]})
    assert response.status_code == 200, response.text[:300]
