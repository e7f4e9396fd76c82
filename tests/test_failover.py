"""Failover on its own: the real in-process pool and upstream client against the simulator
on 127.0.0.1, watched by a recording observer instead of Prometheus and OpenTelemetry.

Every attempt is reported as the observer protocol promises (core/attempt_observer.py):
one `attempt`, then `first_piece` if text came, at most one verdict, and `closed` last,
whichever way the attempt ended (a hang-up included).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import pytest

from gptomni_common.upstream import Outcome, UpstreamClient, UpstreamError, UpstreamTimeouts
from gptomni_relay.core.attempt_observer import AttemptObserver, BothObservers
from gptomni_relay.core.errors import NoCredentials, UpstreamFailed
from gptomni_relay.core.failover import AnswerSource, FailoverPolicy
from gptomni_relay.core.pool import Credential, CredentialPool
from gptomni_relay.edge.server import serve_app
from gptomni_relay.simulator import Behaviour, SimulatorState, build_simulator_app
from tests.polling import FakeClock, eventually


@dataclass
class RecordedAttempt:
    credential_id: str
    number: int
    events: list[str] = field(default_factory=list)

    def running(self) -> AbstractContextManager[object]:
        self.events.append("running")
        return nullcontext()

    def first_piece(self, after_seconds: float) -> None:
        assert after_seconds >= 0
        self.events.append("first_piece")

    def succeeded(self) -> None:
        self.events.append("ok")

    def failed(self, error: UpstreamError, *, answer_started: bool) -> None:
        self.events.append(f"{error.outcome.value}{' after start' if answer_started else ''}")

    def closed(self) -> None:
        assert "closed" not in self.events, "an attempt closed twice"
        self.events.append("closed")


@dataclass
class Recorder:
    """Everything failover reported, in order."""

    attempts: list[RecordedAttempt] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    failovers: int = 0

    def slot_waited(self, seconds: float) -> None:
        assert seconds >= 0
        self.waits.append(seconds)

    def failed_over(self) -> None:
        self.failovers += 1

    def attempt(self, credential_id: str, attempt: int) -> AttemptObserver:
        recorded = RecordedAttempt(credential_id, attempt)
        self.attempts.append(recorded)
        return recorded

    def story(self) -> list[tuple[str, int, list[str]]]:
        return [(a.credential_id, a.number, a.events) for a in self.attempts]


@dataclass
class Rig:
    sim: SimulatorState
    pool: CredentialPool
    recorder: Recorder
    source: AnswerSource


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    sim = SimulatorState()
    async with serve_app(build_simulator_app(sim), quiet=True) as simulator:
        upstream = UpstreamClient(simulator.url, UpstreamTimeouts(connect=5, first_byte=0.5, idle=5))
        # A fake clock: cooldowns never end on their own within a test.
        pool = CredentialPool(cooldown_base_seconds=5, clock=FakeClock())
        pool.replace([Credential("a", "session=a"), Credential("b", "session=b")])
        recorder = Recorder()
        try:
            yield Rig(sim, pool, recorder, AnswerSource(pool, upstream, FailoverPolicy(max_attempts=3), recorder))
        finally:
            await upstream.aclose()


async def test_a_refused_credential_fails_over_to_the_next(rig: Rig) -> None:
    rig.sim.set("session=a", status=429, retry_after=30)
    answer = await rig.source.failover("hello").whole()
    assert answer.credential_id == "b"
    assert rig.recorder.story() == [
        ("a", 1, ["running", "rate_limited", "closed"]),
        ("b", 2, ["running", "first_piece", "ok", "closed"]),
    ]
    assert rig.recorder.failovers == 1
    assert len(rig.recorder.waits) == 2
    assert rig.pool.total_in_flight() == 0


async def test_a_stream_that_breaks_after_its_first_piece_is_reported_as_interrupted(rig: Rig) -> None:
    rig.sim.default = Behaviour(cut_after=2, answer_words=20)
    answer = await rig.source.failover("hello").open()
    with pytest.raises(UpstreamFailed):
        async for _ in answer.pieces():
            pass
    await answer.aclose()
    [attempt] = rig.recorder.attempts
    assert attempt.events == ["running", "first_piece", "error after start", "closed"]
    assert rig.recorder.failovers == 0  # a started stream is committed to its credential


async def test_a_whole_answer_that_breaks_midway_is_asked_again_elsewhere(rig: Rig) -> None:
    rig.sim.set("session=a", cut_after=2, answer_words=20)
    answer = await rig.source.failover("hello").whole()
    assert answer.credential_id == "b"
    assert rig.recorder.story() == [
        ("a", 1, ["running", "first_piece", "error after start", "closed"]),
        ("b", 2, ["running", "first_piece", "ok", "closed"]),
    ]
    assert rig.recorder.failovers == 1


async def test_running_out_of_credentials_reports_every_attempt(rig: Rig) -> None:
    rig.sim.default = Behaviour(status=401)
    with pytest.raises(NoCredentials, match="rejected"):  # the pool's state explains it best
        await rig.source.failover("hello").whole()
    assert rig.recorder.story() == [
        ("a", 1, ["running", Outcome.UNAUTHORIZED.value, "closed"]),
        ("b", 2, ["running", Outcome.UNAUTHORIZED.value, "closed"]),
    ]


async def test_a_hang_up_mid_attempt_still_closes_the_attempt_and_frees_its_slot(rig: Rig) -> None:
    rig.sim.default = Behaviour(first_byte_delay=30)
    task = asyncio.create_task(rig.source.failover("hello").whole())
    await eventually(lambda: len(rig.sim.received) == 1, what="the attempt reached GPT-Omni")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.recorder.story() == [("a", 1, ["running", "closed"])]  # no verdict: nothing failed
    assert rig.pool.total_in_flight() == 0


async def test_both_observers_hear_every_event_in_order(rig: Rig) -> None:
    second = Recorder()
    rig.source.observer = BothObservers(rig.recorder, second)
    rig.sim.set("session=a", status=429, retry_after=30)
    await rig.source.failover("hello").whole()
    assert second.story() == rig.recorder.story()
    assert (second.failovers, len(second.waits)) == (rig.recorder.failovers, len(rig.recorder.waits)) == (1, 2)
