"""A hostile or broken GPT-Omni (or something pretending to be it): whatever it sends,
the relay answers with a well-formed OpenAI response, fails over where another
credential may do better, and keeps its memory bounded."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gptomni_common.upstream.protocol import CHAT_PATH, LANDING_PATH
from gptomni_relay.core.errors import UnusableAnswer
from gptomni_relay.core.shaping import AnswerShape, FunctionTool, JsonFormat, ToolChoice, interpret
from gptomni_relay.core.shaping.extraction import bare_values, json_values, tagged
from gptomni_relay.core.shaping.schemas import answer_deadline, first_violation
from gptomni_relay.edge.server import serve_app
from gptomni_relay.simulator import SimulatorState, build_simulator_app
from tests.bystander import Bystander
from tests.harness import BackgroundLoop, Harness, sample_value
from tests.processes import RelayProcess, relay_process
from tests.test_errors import assert_openai_error

HELLO = {"model": "gptomni", "messages": [{"role": "user", "content": "Hello"}]}


def two_cookies(make_relay, **settings) -> Harness:  # noqa: ANN001
    return make_relay(sim=SimulatorState(), cookies=["session=bad", "session=good"], **settings)


def test_a_retry_after_of_400_digits_is_capped_not_an_overflow(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"], cooldown_max_seconds=120)
    relay.sim.set("session=a", status=429, retry_after="9" * 400)
    http = relay.http()
    first = http.post("/v1/chat/completions", json=HELLO)
    assert_openai_error(first, 429, code="credentials_cooling_down")
    assert 1 <= int(first.headers["Retry-After"]) <= 120
    # The cooldown itself is capped too, and later requests are still answered properly.
    again = http.post("/v1/chat/completions", json=HELLO)
    assert_openai_error(again, 429, code="credentials_cooling_down")
    assert int(again.headers["Retry-After"]) <= 120


def test_a_day_long_retry_after_becomes_our_cooldown_cap(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"], cooldown_max_seconds=60)
    relay.sim.set("session=a", status=429, retry_after=86400)
    response = relay.http().post("/v1/chat/completions", json=HELLO)
    assert_openai_error(response, 429, code="credentials_cooling_down")
    assert int(response.headers["Retry-After"]) <= 60


@pytest.mark.parametrize("content_type", ["text/plain; charset=x-no-such-charset", "text/plain; charset=\"\u00e9\""])
def test_an_unknown_charset_fails_over(make_relay, content_type: str) -> None:  # noqa: ANN001
    relay = two_cookies(make_relay)
    relay.sim.set("session=bad", content_type=content_type)
    for _ in range(4):  # whichever cookie is picked first, the answer comes from the good one
        completion = relay.client().chat.completions.create(model="gptomni", messages=HELLO["messages"])
        assert completion.choices[0].message.content.startswith("Hello from the GPT-Omni simulator")
    assert relay.state.pool.total_in_flight() == 0


def test_a_corrupt_compressed_body_fails_over(make_relay) -> None:  # noqa: ANN001
    relay = two_cookies(make_relay)
    relay.sim.set("session=bad", raw_body=b"\x1f\x8b\x08\x00garbage that is no gzip", content_encoding="gzip")
    completion = relay.client().chat.completions.create(model="gptomni", messages=HELLO["messages"])
    assert completion.choices[0].message.content


def test_an_encoding_we_did_not_ask_for_fails_over(make_relay) -> None:  # noqa: ANN001
    relay = two_cookies(make_relay)
    relay.sim.set("session=bad", raw_body=b"whatever", content_encoding="zstd")
    for _ in range(3):
        assert relay.client().chat.completions.create(model="gptomni", messages=HELLO["messages"]).choices


@pytest.mark.parametrize("stream", [False, True])
def test_a_compressed_answer_is_read_as_text(make_relay, stream: bool) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"])
    answer = "压缩的回答 — a compressed answer. " * 500
    relay.sim.set("session=a", raw_body=gzip.compress(answer.encode()), content_encoding="gzip")
    client = relay.client()
    if stream:
        chunks = client.chat.completions.create(model="gptomni", messages=HELLO["messages"], stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    else:
        text = client.chat.completions.create(model="gptomni", messages=HELLO["messages"]).choices[0].message.content
    assert text == answer


def _gzip_bomb(inflated_mb: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"A" * (1024 * 1024)
    return b"".join([*(compressor.compress(block) for _ in range(inflated_mb)), compressor.flush()])


@pytest.fixture
def relay_against(servers: BackgroundLoop) -> Iterator[Callable[..., tuple[SimulatorState, RelayProcess]]]:
    """A relay *process* (its memory is its own) against a simulator in the test process."""
    with ExitStack() as stack:

        def start(**env: str) -> tuple[SimulatorState, RelayProcess]:
            sim = SimulatorState()
            upstream = servers.enter(serve_app(build_simulator_app(sim)))
            relay = stack.enter_context(relay_process(env={
                "GPTOMNI_UPSTREAM_URL": upstream.url, "GPTOMNI_API_KEYS": "sk-hostile",
                "GPTOMNI_CREDENTIALS": '["session=a"]', **env}))
            return sim, relay

        yield start


@pytest.mark.parametrize("stream", [False, True])
def test_a_gzip_bomb_ends_as_a_clean_error_with_bounded_memory(relay_against, stream: bool) -> None:  # noqa: ANN001
    sim, relay = relay_against(GPTOMNI_MAX_ANSWER_CHARS="2000000")
    sim.set("session=a", raw_body=_gzip_bomb(400), content_encoding="gzip")  # 400 MB of text in ~400 KB
    baseline_mb = relay.peak_memory_mb()
    with httpx.Client(base_url=relay.url, headers={"Authorization": "Bearer sk-hostile"}, timeout=60) as http:
        response = http.post("/v1/chat/completions", json={**HELLO, "stream": stream})
    if stream:  # the stream flowed, then ended with an error event, not [DONE]
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-1])["error"]["code"] == "upstream_answer_too_large"
        assert sum(len(json.loads(e)["choices"][0]["delta"].get("content", "")) for e in events[:-1]) > 1_000_000
    else:
        assert_openai_error(response, 502, code="upstream_answer_too_large")
    grown_mb = relay.peak_memory_mb() - baseline_mb
    assert grown_mb < 64, f"the relay's peak memory grew by {grown_mb:.0f} MB"


def test_an_answer_that_never_ends_is_cut_at_the_time_limit(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"], max_answer_seconds=1.0)
    relay.sim.set("session=a", answer_words=100_000, token_delay=0.01)  # ~17 minutes of steady pieces
    started = time.monotonic()
    response = relay.http().post("/v1/chat/completions", json=HELLO)
    assert_openai_error(response, 504, code="upstream_timeout")
    assert time.monotonic() - started < 10
    assert relay.state.pool.total_in_flight() == 0


def test_a_gzip_answer_cut_short_is_no_answer(make_relay) -> None:  # noqa: ANN001
    relay = two_cookies(make_relay)
    relay.sim.set("session=bad", raw_body=gzip.compress(b"an answer that is cut" * 100)[:-4], content_encoding="gzip")
    for _ in range(3):  # never the truncated text as a complete answer: the good cookie answers
        content = relay.client().chat.completions.create(model="gptomni", messages=HELLO["messages"]).choices[0]
        assert content.message.content.startswith("Hello from the GPT-Omni simulator")


@pytest.mark.parametrize("charset", ["utf-16", "undefined", "zlib", "base64", "rot13", "hex", "idna"])
def test_a_charset_python_cannot_use_as_text_fails_over(make_relay, charset: str) -> None:  # noqa: ANN001
    relay = two_cookies(make_relay)
    relay.sim.set("session=bad", content_type=f"text/plain; charset={charset}")
    for _ in range(3):
        assert relay.client().chat.completions.create(model="gptomni", messages=HELLO["messages"]).choices
    assert relay.state.pool.total_in_flight() == 0


def test_a_clearance_cookie_set_by_another_host_never_reaches_gpt_omni(make_relay, servers: BackgroundLoop) -> None:  # noqa: ANN001
    # The challenge's landing page redirects to another host, which sets a cf_clearance
    # (even the very token GPT-Omni would accept): it is a third party's cookie.
    sim = SimulatorState(challenge="solvable")
    elsewhere = SimulatorState(challenge="solvable", clearance_token=sim.clearance_token)
    other_host = servers.enter(serve_app(build_simulator_app(elsewhere)))
    sim.landing_redirect = f"http://localhost:{other_host.port}/zh"
    relay: Harness = make_relay(sim=sim, cookies=["session=alpha", "session=beta"])
    response = relay.http().post("/v1/chat/completions", json=HELLO)
    assert elsewhere.landing_hits >= 1  # the redirect was followed, and its cookie set
    assert_openai_error(response, 503, code="upstream_challenge")
    assert relay.state.upstream.solver.current.cookies == {}
    assert not any("cf_clearance" in chat.headers.get("cookie", "") for chat in sim.received)


def _gzip_hello_then_empty_blocks() -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(b"Hello") + compressor.flush(zlib.Z_SYNC_FLUSH)


EMPTY_DEFLATE_BLOCK = b"\x00\x00\x00\xff\xff"  # a stored block of no bytes: what Z_SYNC_FLUSH sends


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("limits", "cut_within"), [
    ({"GPTOMNI_IDLE_TIMEOUT_SECONDS": "1", "GPTOMNI_MAX_ANSWER_SECONDS": "600"}, 1.0),  # idleness counts text
    ({"GPTOMNI_IDLE_TIMEOUT_SECONDS": "60", "GPTOMNI_MAX_ANSWER_SECONDS": "2"}, 2.0),  # the answer limit is wall time
], ids=["idle", "answer-time"])
@pytest.mark.parametrize("stream", [False, True])
def test_bytes_that_are_no_text_hold_no_answer_open(relay_against, limits: dict[str, str], cut_within: float,  # noqa: ANN001
                                                    stream: bool) -> None:
    # After a gzip "Hello", an empty deflate block every 0.2 s: bytes keep coming, text never.
    sim, relay = relay_against(**limits)
    sim.set("session=a", raw_body=_gzip_hello_then_empty_blocks(), content_encoding="gzip",
            raw_body_then_every=(0.2, EMPTY_DEFLATE_BLOCK))
    bystander = Bystander(relay.url)
    bystander.baseline()
    baseline_mb = relay.peak_memory_mb()
    with bystander, httpx.Client(base_url=relay.url, headers={"Authorization": "Bearer sk-hostile"},
                                 timeout=30) as http:
        started = time.monotonic()
        response = http.post("/v1/chat/completions", json={**HELLO, "stream": stream})
        took = time.monotonic() - started
    if stream:  # "Hello" flowed, then the stream ended with an error event, not [DONE]
        events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["delta"].get("content", "") + "".join(
            json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[1:-1]) == "Hello"
        assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"
    else:
        assert_openai_error(response, 504, code="upstream_timeout")
    assert cut_within <= took < cut_within + 10, f"the answer was cut after {took:.1f} s"
    metrics = httpx.get(f"{relay.metrics_url}/metrics", timeout=10).text
    assert sample_value(metrics, "gptomni_credential_in_flight") == 0  # the slot is free again
    grown_mb = relay.peak_memory_mb() - baseline_mb
    assert grown_mb < 16, f"the relay's peak memory grew by {grown_mb:.0f} MB"
    bystander.assert_not_starved()


def _hostile_landing(landing: Callable[[Request], Awaitable[Response]], seen: dict[str, int]) -> Starlette:
    """A GPT-Omni behind a challenge that only `cf_clearance=ok` passes, with `landing` as /zh."""
    async def chat(request: Request) -> Response:
        cookie = request.headers.get("cookie", "")
        seen["max_cookie_header"] = max(seen.get("max_cookie_header", 0), len(cookie))
        if "cf_clearance=ok" not in cookie:
            return HTMLResponse("<title>Just a moment...</title>", status_code=403,
                                headers={"server": "cloudflare", "cf-mitigated": "challenge"})
        return PlainTextResponse("Hello")
    return Starlette(routes=[Route(CHAT_PATH, chat, methods=["POST"]), Route(LANDING_PATH, landing, methods=["GET"])])


@pytest.fixture
def relay_behind_landing(servers: BackgroundLoop) -> Iterator[Callable[..., tuple[dict[str, int], RelayProcess]]]:
    with ExitStack() as stack:
        def start(landing: Callable[[Request], Awaitable[Response]], **env: str) -> tuple[dict[str, int], RelayProcess]:
            seen: dict[str, int] = {}
            upstream = servers.enter(serve_app(_hostile_landing(landing, seen)))
            relay = stack.enter_context(relay_process(env={
                "GPTOMNI_UPSTREAM_URL": upstream.url, "GPTOMNI_API_KEYS": "sk-hostile",
                "GPTOMNI_CREDENTIALS": '["session=a"]', **env}))
            return seen, relay
        yield start


def _in_flight(relay: RelayProcess) -> float:
    return sample_value(httpx.get(f"{relay.metrics_url}/metrics", timeout=10).text, "gptomni_credential_in_flight")


@pytest.mark.timeout(120)
def test_a_gzip_bomb_landing_page_is_read_to_a_bound(relay_behind_landing) -> None:  # noqa: ANN001
    bomb = _gzip_bomb(300)  # 300 MB of "A" in ~300 KB: each challenge round inflated it whole

    async def landing(_: Request) -> Response:
        return Response(bomb, headers={"content-type": "text/html", "content-encoding": "gzip"})

    _, relay = relay_behind_landing(landing)
    baseline_mb = relay.peak_memory_mb()
    with httpx.Client(base_url=relay.url, headers={"Authorization": "Bearer sk-hostile"}, timeout=60) as http:
        response = http.post("/v1/chat/completions", json=HELLO)
    assert_openai_error(response, 503, code="upstream_challenge")
    grown_mb = relay.peak_memory_mb() - baseline_mb
    assert grown_mb < 48, f"the relay's peak memory grew by {grown_mb:.0f} MB"


@pytest.mark.timeout(120)
def test_a_landing_page_that_never_ends_holds_no_slot(relay_behind_landing) -> None:  # noqa: ANN001
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(600):  # one byte every 0.5 s, for far longer than any deadline here
            yield b"<"
            await asyncio.sleep(0.5)

    async def landing(_: Request) -> Response:
        return StreamingResponse(trickle(), headers={"content-type": "text/html"})

    _, relay = relay_behind_landing(landing, GPTOMNI_FIRST_BYTE_TIMEOUT_SECONDS="3",
                                    GPTOMNI_FAILOVER_BUDGET_SECONDS="3", GPTOMNI_DEFAULT_MAX_CONCURRENCY="8")
    took: list[float] = []

    def one() -> None:
        started = time.monotonic()
        with httpx.Client(base_url=relay.url, headers={"Authorization": "Bearer sk-hostile"}, timeout=60) as http:
            response = http.post("/v1/chat/completions", json=HELLO)
        took.append(time.monotonic() - started)
        assert response.status_code in (503, 504), response.text

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(70)
    assert len(took) == 3 and max(took) < 3 + 15, f"answers took {took}"  # the attempt's deadline, not the page's
    assert _in_flight(relay) == 0


@pytest.mark.timeout(120)
def test_a_flood_of_clearance_cookies_is_not_sent_upstream(relay_behind_landing) -> None:  # noqa: ANN001
    async def landing(_: Request) -> Response:
        response = HTMLResponse("<html>chat</html>")
        response.set_cookie("cf_clearance", "ok", path="/")
        for i in range(90):  # the upstream's own host, so the domain check lets them through
            response.set_cookie(f"cf_h{i}", "v" * 60_000, path="/")
        response.set_cookie("__cf_bm", "b" * 60_000, path="/")  # a known name, but too large
        return response

    seen, relay = relay_behind_landing(landing, GPTOMNI_DEFAULT_MAX_CONCURRENCY="16")
    with httpx.Client(base_url=relay.url, headers={"Authorization": "Bearer sk-hostile"}, timeout=60) as http:
        response = http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello"
    assert seen["max_cookie_header"] <= 8192 + 64, f"a {seen['max_cookie_header']} byte Cookie header reached GPT-Omni"
def test_an_unclosed_code_fence_is_read_in_linear_time() -> None:
    """An answer of a fence opening and 64k letters (a model can be steered to write it)
    cost 19 s of CPU on the event loop with a backtracking info string; CPU time, not wall
    time, so a busy machine does not fail it."""
    started = time.process_time()
    assert json_values("```" + "a" * 64_000) == []
    assert json_values('```json\n{"a": 1}```')[0].value == {"a": 1}
    assert time.process_time() - started < 2


# ~900 KB that makes every opening a long parse failing at the very end: unclosed, or
# closed on a number JSON cannot carry (a failure that does not say where it was).
_LONG_FAILS = ["[" * 64 + "1," * 450_000, "[" * 64 + "1," * 449_990 + "1e999" + "]" * 64,
               '{"a": ' * 64 + '"' + "x" * 900_000]


@pytest.mark.parametrize("text", _LONG_FAILS, ids=["unclosed", "out-of-range", "unclosed-string"])
def test_json_in_an_answer_is_looked_for_within_a_budget(text: str) -> None:
    """64 openings each parsed to the end of the answer: 878 KB cost 0.73 s a reading."""
    started = time.process_time()
    assert bare_values(text) == [] and json_values(text) == []
    # The whole reading of tool calls (tags, fences, bare JSON, twice) on the same answer.
    shape = AnswerShape(tools=(FunctionTool("f", None, None),), tool_choice=ToolChoice("auto"))
    assert interpret(shape, text).tool_calls == ()
    assert time.process_time() - started < 0.5  # ~0.1 s; before: ~2.2 s


def test_many_broken_tags_are_looked_past_a_bounded_number_of_times() -> None:
    """Each failed decode counts the lines from the answer's start (the stdlib's
    JSONDecodeError): 25,000 broken tags, 805 KB, were 8.5 s to read tool calls from."""
    text = ("<tool_call>" + "[" * 10 + "</tool_call>") * 25_000
    shape = AnswerShape(tools=(FunctionTool("f", None, None),), tool_choice=ToolChoice("auto"))
    started = time.process_time()
    with pytest.raises(UnusableAnswer):
        interpret(shape, text)
    assert time.process_time() - started < 1  # ~0.1 s; before: 8.5 s



def test_the_json_budget_leaves_ordinary_answers_whole() -> None:
    # Many openings that are no JSON, long values, and what follows them are all found.
    prose = "See [1] and [note] {x} " * 15  # 30 failed openings, cheap ones (64 are tried)
    values = [{"n": i, "text": "y" * 20_000} for i in range(3)]
    text = prose + " then ".join(json.dumps(value) for value in values) + " [1, 2]"
    found = bare_values(text)
    assert [item.value for item in found if item.value != [1]][-4:] == [*values, [1, 2]]
    whole = json.dumps({"items": list(range(200_000))})  # one large value, the whole answer
    assert bare_values(whole)[0].value == {"items": list(range(200_000))}
    assert tagged("<tool_call>" + whole + "</tool_call>")[0].value == {"items": list(range(200_000))}


def _doubling_schema(levels: int) -> dict:
    """Small (1.4 KB at 20 levels), valid, and twice the work at every level."""
    defs = {f"d{k}": {"allOf": [{"$ref": f"#/$defs/d{k + 1}"}, {"$ref": f"#/$defs/d{k + 1}"}]} for k in range(levels)}
    defs[f"d{levels}"] = {"type": "object"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def test_a_schema_that_doubles_its_work_per_level_is_cut_at_the_check_deadline() -> None:
    """20 levels were 22 s of CPU on the event loop (a deadline on patterns only)."""
    assert first_violation(_doubling_schema(3), {}, answer_deadline()) is None  # a few levels: checked in full
    started = time.process_time()
    verdict = first_violation(_doubling_schema(20), {}, answer_deadline())
    assert verdict is not None and "took longer than the relay's" in verdict
    assert time.process_time() - started < 2


def test_one_deadline_holds_for_every_value_of_an_answer() -> None:
    """40 fenced `{}` against a doubling schema were 40 checks of 0.25 s each: 10 s a reading.
    (Tool calls stop at the first call whose arguments fail, so they never multiplied.)"""
    shape = AnswerShape(json_format=JsonFormat(schema=_doubling_schema(22)))
    started = time.process_time()
    with pytest.raises(UnusableAnswer) as caught:
        interpret(shape, "```json\n{}\n```\n" * 40)
    assert "took longer than the relay's" in caught.value.message
    assert time.process_time() - started < 2  # one 0.25 s deadline; before: 10 s


def test_unique_items_is_one_pass() -> None:
    """8,000 distinct objects were 41 s (jsonschema's pairwise fallback for unhashable items)."""
    schema = {"type": "array", "uniqueItems": True}
    started = time.process_time()
    assert first_violation(schema, [{"n": i} for i in range(8000)], answer_deadline()) is None
    assert time.process_time() - started < 2
    # JSON Schema's equality: key order and 1 / 1.0 do not tell values apart, true and 1 do.
    assert first_violation(schema, [{"a": 1, "b": [2]}, {"b": [2.0], "a": 1}], answer_deadline()) is not None
    assert first_violation(schema, [True, 1, False, 0, None], answer_deadline()) is None
    assert first_violation(schema, [[1, 2], [2, 1]], answer_deadline()) is None
