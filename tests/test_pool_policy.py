"""The pool's cooldown rules as one table of cases, run through both of their forms: the
Python (core/pool_policy.py, what the in-process pool applies) and the Lua a real Redis
runs for the shared pool (shared_store.COOL_DOWN, built from pool_policy's snippet).
A case that passes on one and fails on the other is the drift this file exists to catch."""

from __future__ import annotations

import math

import pytest

from gptomni_common.upstream.protocol import Outcome, parse_retry_after
from gptomni_relay.core.pool_policy import COOLDOWN_FLOOR_MS, VERDICTS, Cooldowns, Effect
from gptomni_relay.core.shared_store import COOL_DOWN, VERDICT_KEEP_SECONDS
from tests.redis_server import RedisServer

POLICY = Cooldowns.from_seconds(5, 40)  # base 5 s, at most 40 s

# (why, strikes including this one, Retry-After in seconds or None, expected cooldown in ms)
CASES = [
    ("backoff: first rate limit", 1, None, 5_000),
    ("backoff doubles", 2, None, 10_000),
    ("backoff doubles again", 3, None, 20_000),
    ("backoff reaches the max", 4, None, 40_000),
    ("backoff capped at the max", 5, None, 40_000),
    ("a thousand strikes: exponent capped, still the max", 1000, None, 40_000),
    ("Retry-After wins over the backoff", 3, 3.0, 3_000),
    ("Retry-After in fractions", 1, 2.5, 2_500),
    ("Retry-After: 0 still cools for the floor", 1, 0.0, COOLDOWN_FLOOR_MS),
    ("an HTTP date in the past (parsed to 0)", 1, parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), 1_000),
    ("a negative delay (a clock ahead of the upstream's)", 1, -30.0, 1_000),
    ("below the floor", 4, 0.2, 1_000),
    ("huge: clamped to the max", 1, 1e9, 40_000),
    ("the parser's cap, a day: clamped to the max", 1, parse_retry_after("9" * 400), 40_000),
    ("infinite: clamped to the max", 1, math.inf, 40_000),
    ("not a number: as if missing", 2, math.nan, 10_000),
]
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("why", "strikes", "retry_after", "expected_ms"), CASES, ids=IDS)
def test_python(why: str, strikes: int, retry_after: float | None, expected_ms: int) -> None:
    assert POLICY.delay_ms(strikes, retry_after) == expected_ms


@pytest.fixture(scope="module")
def redis_once(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    server = RedisServer(tmp_path_factory.mktemp("policy-redis"))
    server.start()
    with server.client() as client:
        yield client
    server.stop()


@pytest.mark.parametrize(("why", "strikes", "retry_after", "expected_ms"), CASES, ids=IDS)
def test_lua_in_a_real_redis(redis_once, why: str, strikes: int, retry_after: float | None,  # noqa: ANN001
                             expected_ms: int) -> None:
    redis_once.flushall()
    if strikes > 1:
        redis_once.set("{p}:strikes:c", strikes - 1)  # the script counts this one
    left_strikes, left_ms = redis_once.eval(COOL_DOWN, 2, "{p}:cooling:c", "{p}:strikes:c",
                                            *POLICY.lua_args(retry_after), VERDICT_KEEP_SECONDS * 1000)
    assert (left_strikes, left_ms) == (strikes, expected_ms)
    assert expected_ms - 100 < redis_once.pttl("{p}:cooling:c") <= expected_ms  # and the key expires then


def test_a_cooldown_only_grows_in_both(redis_once) -> None:  # noqa: ANN001
    redis_once.flushall()
    keys = ("{p}:cooling:c", "{p}:strikes:c")
    redis_once.eval(COOL_DOWN, 2, *keys, *POLICY.lua_args(30.0), VERDICT_KEEP_SECONDS * 1000)
    _, left_ms = redis_once.eval(COOL_DOWN, 2, *keys, *POLICY.lua_args(0.0), VERDICT_KEEP_SECONDS * 1000)
    assert 29_000 < left_ms <= 30_000  # a later, shorter Retry-After does not cut it short


def test_a_maximum_below_the_floor_wins() -> None:
    assert Cooldowns.from_seconds(5, 0.5).delay_ms(1, 0.0) == 500


def test_every_outcome_has_exactly_one_effect() -> None:
    assert set(VERDICTS) == set(Outcome)
    assert VERDICTS[Outcome.UNAUTHORIZED] is Effect.EJECT
    assert {o for o, e in VERDICTS.items() if e is Effect.COOL_DOWN} == {Outcome.RATE_LIMITED, Outcome.CHALLENGE}
    assert {o for o, e in VERDICTS.items() if e is Effect.NONE} == {Outcome.TIMEOUT, Outcome.ERROR}
