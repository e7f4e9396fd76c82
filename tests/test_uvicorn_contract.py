"""The edge's contract with uvicorn's internals: what edge/http_guard.py subclasses and reads.

GuardedHttpProtocol subclasses `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`,
overrides its parser callbacks and reads its per-connection state (`cycle`, `pipeline`,
`flow`, `transport`, `loop`, `client`) and the request cycle's flags (`response_started`,
`response_complete`, `keep_alive`, `body`); edge/raw_send.py reaches the cycle through the app's
`send` and reads its `transport` and sets `disconnected`. None of that is uvicorn's public API, so
pyproject.toml pins the range it was written against, and this file fails loudly, naming
what moved, when an installed uvicorn no longer matches: first by name and signature,
then through a real server on 127.0.0.1, where the guard must still hold a pipelined
request unparsed until the answer before it is complete (and the same check run on
uvicorn's own protocol must see it parsed at once: the check can fail).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest
import uvicorn
from packaging.requirements import Requirement
from packaging.version import Version
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gptomni_relay.edge.http_guard import DEFAULT_LIMITS, GuardedHttpProtocol
from gptomni_relay.edge.server import serve_app
from tests.polling import eventually

ROOT = Path(__file__).resolve().parent.parent
WHO = f"uvicorn {uvicorn.__version__}"

# The callbacks GuardedHttpProtocol overrides, with the parameters uvicorn calls them with.
OVERRIDDEN = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"],
    "send_400_response": ["self", "msg"],
    "on_message_begin": ["self"],
    "on_url": ["self", "url"],
    "on_header": ["self", "name", "value"],
    "on_headers_complete": ["self"],
    "on_message_complete": ["self"],
    "on_response_complete": ["self"],
}


def uvicorn_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (line,) = [dep for dep in project["dependencies"] if Requirement(dep).name == "uvicorn"]
    return Requirement(line)


def test_the_pin_is_a_closed_range_that_holds_the_installed_uvicorn() -> None:
    requirement = uvicorn_requirement()
    operators = {spec.operator for spec in requirement.specifier}
    assert "<" in operators and ">=" in operators, f"uvicorn must be pinned to a range, not {requirement}"
    installed = Version(uvicorn.__version__)
    assert requirement.specifier.contains(installed), (
        f"{WHO} is installed but the edge was written against {requirement.specifier}: "
        "run tests/test_uvicorn_contract.py and tests/test_hostile_clients.py with it, then move the pin")


def test_the_overridden_callbacks_exist_with_the_parameters_uvicorn_calls_them_with() -> None:
    for name, parameters in OVERRIDDEN.items():
        theirs = getattr(HttpToolsProtocol, name, None)
        assert callable(theirs), f"{WHO}: HttpToolsProtocol.{name} is gone; edge/http_guard.py overrides it"
        found = list(inspect.signature(theirs).parameters)
        assert found == parameters, f"{WHO}: HttpToolsProtocol.{name} now takes {found}, the guard expects {parameters}"
        assert name in vars(GuardedHttpProtocol), f"the guard no longer overrides {name}: update OVERRIDDEN"


def test_the_protocol_is_still_built_the_way_the_guard_passes_its_limits_through() -> None:
    # guarded_protocol() is a partial adding `limits=`; uvicorn builds the protocol with these keywords.
    found = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert found == ["self", "config", "server_state", "app_state", "_loop"], (
        f"{WHO}: HttpToolsProtocol.__init__ now takes {found}")
    assert {"pause_reading", "resume_reading"} <= set(vars(FlowControl)), (
        f"{WHO}: FlowControl.pause_reading / resume_reading moved; the guard pauses reading through them")
    assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError), (
        "httptools: an error raised in a parser callback is no longer an HttpParserError, which uvicorn "
        "turns into send_400_response (where the guard answers its 431)")


async def test_the_state_the_guard_reads_is_there_on_a_live_connection() -> None:
    protocols: list[GuardedHttpProtocol] = []
    seen: dict[str, Any] = {}

    class Watched(GuardedHttpProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            protocols.append(self)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        (protocol,) = protocols
        cycle = protocol.cycle
        seen.update(cycle_type=type(cycle), started=cycle.response_started, complete=cycle.response_complete,
                    keep_alive=cycle.keep_alive, pipeline=type(protocol.pipeline), flow=type(protocol.flow),
                    read_paused=protocol.flow.read_paused, transport=protocol.transport, loop=protocol.loop,
                    client=protocol.client, send_owner=getattr(send, "__self__", None),
                    cycle_transport=getattr(cycle, "transport", None), disconnected=getattr(cycle, "disconnected", None),
                    body=getattr(cycle, "body", None))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve_app(app, quiet=True, lifespan="off",
                         http=functools.partial(Watched, limits=DEFAULT_LIMITS)) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/")
        assert response.status_code == 200 and seen, f"{WHO}: the app never ran"
        (protocol,) = protocols
        assert protocol.cycle.response_complete is True, f"{WHO}: RequestResponseCycle.response_complete moved"
    assert seen["cycle_type"] is RequestResponseCycle, f"{WHO}: HttpToolsProtocol.cycle is {seen['cycle_type']}"
    assert (seen["started"], seen["complete"], seen["keep_alive"]) == (False, False, True), (
        f"{WHO}: RequestResponseCycle's response_started / response_complete / keep_alive changed meaning: "
        f"{seen['started'], seen['complete'], seen['keep_alive']} before the answer")
    assert seen["pipeline"] is collections.deque, f"{WHO}: HttpToolsProtocol.pipeline is {seen['pipeline']}"
    assert issubclass(seen["flow"], FlowControl) and seen["read_paused"] is False, (
        f"{WHO}: HttpToolsProtocol.flow / FlowControl.read_paused moved")
    assert isinstance(seen["transport"], asyncio.Transport), f"{WHO}: HttpToolsProtocol.transport moved"
    assert seen["loop"] is asyncio.get_running_loop(), f"{WHO}: HttpToolsProtocol.loop moved"
    assert isinstance(seen["client"], tuple) and seen["client"][0] == "127.0.0.1", (
        f"{WHO}: HttpToolsProtocol.client is {seen['client']!r}")
    # edge/raw_send.transport_closed finds the transport through the app's `send` and marks
    # a hang-up the way connection_lost does.
    assert seen["send_owner"] is protocol.cycle, f"{WHO}: the app's send is no longer RequestResponseCycle.send"
    assert seen["cycle_transport"] is seen["transport"], f"{WHO}: RequestResponseCycle.transport moved"
    assert seen["disconnected"] is False, f"{WHO}: RequestResponseCycle.disconnected moved"
    # The guard drops what is buffered of a body answered before it was read.
    assert isinstance(seen["body"], bytearray), f"{WHO}: RequestResponseCycle.body is {seen['body']!r}"


def recording(base: type[HttpToolsProtocol], parsed: list[bytes],
              protocols: list[HttpToolsProtocol]) -> type[HttpToolsProtocol]:
    """`base` noting each URL the parser reads (its on_url callback) and each connection."""

    class Recording(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            protocols.append(self)

        def on_url(self, url: bytes) -> None:
            parsed.append(url)
            super().on_url(url)

    return Recording


async def answer_status(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    return head.split(b"\r\n", 1)[0], await reader.readexactly(length)


async def check_pipelined_request_is_held(http: Callable[..., Any], parsed: list[bytes],
                                          protocols: list[HttpToolsProtocol]) -> None:
    """Two requests in one write; the first's answer waits. The second must stay unparsed and
    the connection unread until the first answer is complete, then be answered, in order."""
    release = asyncio.Event()
    first_started = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/first":
            first_started.set()
            await release.wait()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async with serve_app(app, quiet=True, lifespan="off", http=http) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(first_started.wait(), 10)
            (protocol,) = protocols
            # Both requests came in: held by the guard, or parsed by uvicorn.
            await eventually(lambda: getattr(protocol, "held_bytes", 0) or b"/second" in parsed,
                             what="the pipelined request to arrive")
            assert parsed == [b"/first"], (
                f"{WHO} parsed a pipelined request while the answer before it was unfinished ({parsed}): "
                "the guard's hold (data_received feeding the parser up to each request's end, "
                "flow.pause_reading) no longer works on HttpToolsProtocol")
            assert protocol.flow.read_paused and not protocol.transport.is_reading(), (
                f"{WHO}: the connection is still read while a request waits its turn "
                "(FlowControl.pause_reading no longer pauses the transport)")
            release.set()
            assert await asyncio.wait_for(answer_status(reader), 10) == (b"HTTP/1.1 200 OK", b"/first")
            assert await asyncio.wait_for(answer_status(reader), 10) == (b"HTTP/1.1 200 OK", b"/second"), (
                f"{WHO}: the held request was not answered after the first (on_response_complete)")
            # Reading resumed after the answers (uvicorn's on_response_complete): a third is served.
            writer.write(b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await asyncio.wait_for(answer_status(reader), 10) == (b"HTTP/1.1 200 OK", b"/third"), (
                f"{WHO}: the connection is not read again after an answer")
            assert parsed == [b"/first", b"/second", b"/third"]
        finally:
            release.set()
            writer.close()


async def test_the_guard_holds_a_pipelined_request_until_the_answer_before_it_is_complete() -> None:
    parsed: list[bytes] = []
    protocols: list[HttpToolsProtocol] = []
    guarded = recording(GuardedHttpProtocol, parsed, protocols)
    await check_pipelined_request_is_held(functools.partial(guarded, limits=DEFAULT_LIMITS), parsed, protocols)


async def test_the_hold_check_fails_on_uvicorn_without_the_guard() -> None:
    parsed: list[bytes] = []
    protocols: list[HttpToolsProtocol] = []
    with pytest.raises(AssertionError, match="parsed a pipelined request"):
        await check_pipelined_request_is_held(recording(HttpToolsProtocol, parsed, protocols), parsed, protocols)


async def test_a_refusal_raised_in_a_parser_callback_becomes_the_guards_answer() -> None:
    # The guard refuses from inside httptools' callbacks (on_header); uvicorn must still turn the
    # parser's error into send_400_response, which the guard answers with its own status.
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("a refused request reached the app")

    async with serve_app(app, quiet=True, lifespan="off") as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            headers = b"".join(b"X-H%d: v\r\n" % i for i in range(DEFAULT_LIMITS.max_header_count + 1))
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
            reply = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    assert reply.startswith(b"HTTP/1.1 431 "), f"{WHO}: a refusal from a parser callback gave {reply[:80]!r}"
