"""A faithful stand-in for GPT-Omni's web endpoint, for demo mode, tests and benchmarks.

It speaks the real wire protocol: `POST /api/chatWithText` with a text/plain JSON body,
the session in the Cookie header, and the answer as a chunked raw text stream. Each
session cookie can be told to misbehave (401/403/429, slow first byte, slow tokens, a
cut mid-answer); Cloudflare can be made to interpose its "Just a moment..." page.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from gptomni_common.upstream.protocol import CHAT_PATH, LANDING_PATH
from gptomni_relay.simulated_json import json_answer

CLEARANCE_COOKIE = "cf_clearance"

CHALLENGE_PAGE = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="refresh" content="360"></head><body><div class="main-wrapper" role="main">
<h1>gptomni.ai</h1><p>Verifying you are human. This may take a few seconds.</p>
<noscript>Enable JavaScript and cookies to continue</noscript>
<script>window._cf_chl_opt={cType:'managed'};</script></div></body></html>"""

_WORDS = re.compile(r"\S+\s*")
# A deterministic cue for shaped answers (JSON, tool calls, their messy forms): the n-th
# request whose prompt carries `[[simulate: A ||| B ||| ...]]` is answered with the n-th
# text (the last one repeats), so a test can script an invalid answer, then a valid one.
_CUE = re.compile(r"\[\[simulate:(.*?)\]\]", re.S)
# In a cued answer, `{{tool_result}}` stands for the last tool result the prompt carries
# (the relay's `Tool result (...): ...` turn), so a two-turn tool conversation shows the
# result reached the model.
_TOOL_RESULT = re.compile(r"^Tool result[^:\n]*: (.*?)(?=\n\n(?:System|User|Assistant|Tool result)\b|\Z)", re.S | re.M)


class SimulatedCut(Exception):
    """Raised inside the answer stream so the server drops the connection mid-body."""


@dataclass
class Behaviour:
    """What the simulator does for one session cookie."""

    status: int | None = None
    retry_after: int | str | None = None
    first_byte_delay: float = 0.0
    token_delay: float = 0.0
    cut_after: int | None = None
    answer: str | None = None
    answer_words: int | None = None
    # For benchmarks on one machine: the first piece starts with "[<arrived> <sent>] ", the
    # time.monotonic() at which the request arrived and the piece left, so the time spent
    # before and after the upstream (the relay's share) can be told apart per request.
    stamp_times: bool = False
    # A misbehaving upstream: the answer's Content-Type as sent, and a body sent instead of
    # the answer, byte for byte, with this Content-Encoding (e.g. a gzip bomb).
    content_type: str = "text/plain; charset=utf-8"
    raw_body: bytes | None = None
    content_encoding: str | None = None
    # Tests: after its first piece the answer waits for this event (set in the simulator's
    # loop), so that answers are shown to be open at once without timing them.
    hold: asyncio.Event | None = None
    # After `raw_body`, these bytes again every so many seconds, without end: an upstream
    # that holds an answer open with bytes that are no text (an empty deflate block).
    raw_body_then_every: tuple[float, bytes] | None = None


@dataclass(frozen=True)
class ReceivedChat:
    session: str
    prompt: str
    headers: dict[str, str]


@dataclass
class SimulatorState:
    # None accepts any non-empty session; a set accepts only those.
    accepted: set[str] | None = None
    default: Behaviour = field(default_factory=Behaviour)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    challenge: Literal["off", "solvable", "blocked"] = "off"
    # A hostile landing page: it redirects here (e.g. another host that sets a
    # `cf_clearance` of its own) instead of setting the clearance cookie.
    landing_redirect: str | None = None
    clearance_token: str = field(default_factory=lambda: secrets.token_hex(16))
    received: deque[ReceivedChat] = field(default_factory=lambda: deque(maxlen=10_000))
    # Chaos: each request draws one of these (probability, behaviour) pairs, else behaves
    # normally. Seeded, so a failing run can be replayed.
    faults: list[tuple[float, Behaviour]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    active: int = 0
    # Per session: answers streaming now, and the most ever at once (what a per-cookie
    # concurrency limit must bound, whichever relay replica sent them).
    active_by_session: Counter[str] = field(default_factory=Counter)
    peak_by_session: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    unfinished: int = 0
    landing_hits: int = 0
    cue_uses: Counter[str] = field(default_factory=Counter)

    def cued_answer(self, prompt: str) -> str | None:
        cues = _CUE.findall(prompt)
        if not cues:
            return None
        answers = [answer.strip() for answer in cues[-1].split("|||")]
        used = self.cue_uses[cues[-1]]
        self.cue_uses[cues[-1]] += 1
        answer = answers[min(used, len(answers) - 1)]
        if "{{tool_result}}" in answer:
            results = _TOOL_RESULT.findall(prompt)
            answer = answer.replace("{{tool_result}}", results[-1].strip() if results else "(no tool result)")
        return answer

    def behaviour_for(self, session: str) -> Behaviour:
        draw = self.rng.random() if self.faults else 1.0
        for probability, behaviour in self.faults:
            if draw < probability:
                return behaviour
            draw -= probability
        return self.behaviours.get(session, self.default)

    def set(self, session: str, **changes: object) -> Behaviour:
        behaviour = Behaviour(**changes)  # type: ignore[arg-type]
        self.behaviours[session] = behaviour
        return behaviour


def split_cookie_header(header: str) -> tuple[str, dict[str, str]]:
    """The session part of a Cookie header, and any Cloudflare cookies riding along."""
    session_parts, cloudflare = [], {}
    for part in (p.strip() for p in header.split(";")):
        name, _, value = part.partition("=")
        if name.startswith(("cf_", "__cf")):
            cloudflare[name] = value
        elif part:
            session_parts.append(part)
    return "; ".join(session_parts), cloudflare


def default_answer(prompt: str, words: int | None) -> str:
    if words is not None:
        vocabulary = "the relay streams every token of this simulated answer back to you".split()
        return " ".join(vocabulary[i % len(vocabulary)] for i in range(words)) + "."
    last_line = next((line.strip() for line in reversed(prompt.splitlines()) if line.strip() and line.strip() != "Assistant:"), "")
    _, labelled, text = last_line.partition("User: ")
    return f"Hello from the GPT-Omni simulator! You said: {(text if labelled else last_line)[:200]}"


def _challenge_response() -> HTMLResponse:
    return HTMLResponse(
        CHALLENGE_PAGE,
        status_code=403,
        headers={"server": "cloudflare", "cf-mitigated": "challenge", "cache-control": "no-store"},
    )


def build_simulator_app(state: SimulatorState) -> Starlette:
    async def landing(request: Request) -> Response:
        state.landing_hits += 1
        if state.challenge == "blocked":
            return _challenge_response()
        if state.landing_redirect is not None:
            return RedirectResponse(state.landing_redirect, status_code=302)
        response = HTMLResponse("<!DOCTYPE html><html><head><title>GPT-Omni</title></head><body>chat</body></html>")
        if state.challenge == "solvable":
            response.set_cookie(CLEARANCE_COOKIE, state.clearance_token, path="/", httponly=True)
        return response

    async def chat(request: Request) -> Response:
        arrived = time.monotonic()
        session, cloudflare = split_cookie_header(request.headers.get("cookie", ""))
        if state.challenge != "off" and cloudflare.get(CLEARANCE_COOKIE) != state.clearance_token:
            return _challenge_response()
        if not request.headers.get("content-type", "").startswith("text/plain"):
            return JSONResponse({"code": 400, "msg": "bad content type"}, status_code=400)
        try:
            prompt = json.loads(await request.body())["prompt"]
            if not isinstance(prompt, str):
                raise TypeError("prompt")
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"code": 400, "msg": "bad request"}, status_code=400)
        state.received.append(ReceivedChat(session, prompt, dict(request.headers)))
        if not session or (state.accepted is not None and session not in state.accepted):
            return JSONResponse({"code": 401, "msg": "please log in"}, status_code=401)
        behaviour = state.behaviour_for(session)
        if behaviour.status is not None:
            headers = {"retry-after": str(behaviour.retry_after)} if behaviour.retry_after is not None else {}
            return JSONResponse({"code": behaviour.status, "msg": "refused"}, status_code=behaviour.status, headers=headers)
        if behaviour.raw_body is not None:
            encoding = {"content-encoding": behaviour.content_encoding} if behaviour.content_encoding else {}
            headers = {"content-type": behaviour.content_type, **encoding}
            if behaviour.raw_body_then_every is not None:
                return StreamingResponse(_raw_without_end(behaviour.raw_body, *behaviour.raw_body_then_every),
                                         headers=headers)
            return Response(behaviour.raw_body, headers=headers)
        answer = behaviour.answer if behaviour.answer is not None else state.cued_answer(prompt)
        if answer is None:
            answer = default_answer(prompt, behaviour.answer_words)
            answer = json_answer(prompt, answer) or answer
        return StreamingResponse(_stream(answer, behaviour, arrived, session),
                                 headers={"content-type": behaviour.content_type})

    async def _raw_without_end(body: bytes, every: float, more: bytes) -> AsyncIterator[bytes]:
        yield body
        while True:
            await asyncio.sleep(every)
            yield more

    async def _stream(answer: str, behaviour: Behaviour, arrived: float, session: str) -> AsyncIterator[bytes]:
        state.active += 1
        state.active_by_session[session] += 1
        state.peak_by_session[session] = max(state.peak_by_session[session], state.active_by_session[session])
        finished = False
        try:
            if behaviour.first_byte_delay:
                await asyncio.sleep(behaviour.first_byte_delay)
            for index, match in enumerate(_WORDS.finditer(answer)):
                if behaviour.cut_after is not None and index >= behaviour.cut_after:
                    raise SimulatedCut("simulated mid-stream cut")
                if index == 1 and behaviour.hold is not None:
                    await behaviour.hold.wait()
                if index and behaviour.token_delay:
                    await asyncio.sleep(behaviour.token_delay)
                stamp = f"[{arrived:.6f} {time.monotonic():.6f}] " if behaviour.stamp_times and not index else ""
                yield (stamp + match.group(0)).encode("utf-8")
            finished = True
        finally:
            state.active -= 1
            state.active_by_session[session] -= 1
            if finished:
                state.completed += 1
            else:
                state.unfinished += 1

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route(CHAT_PATH, chat, methods=["POST"]),
            Route(LANDING_PATH, landing, methods=["GET"]),
            Route("/", landing, methods=["GET"]),
            Route("/__simulator__/health", health, methods=["GET"]),
        ]
    )
