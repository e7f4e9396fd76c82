"""Selection and verdict rules of the pool, on a controllable clock, against both backends:
the in-process pool and the shared pool on a real Redis (one parametrised fixture,
tests/pool_backends.py). The rules are core/pool_policy.py's; these cases hold the two
forms of them (Python and the shared store's Lua) to one behaviour."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from gptomni_common.upstream import Outcome
from gptomni_common.upstream.protocol import parse_retry_after
from gptomni_relay.core.errors import AllBusy, AllChallenged, AllCoolingDown, NoCredentials, NothingLeftToTry
from gptomni_relay.core.pool import Credential, Health
from tests.pool_backends import InProcess, backend


def assert_cools(observed: float, cooling: float, reported_at: float) -> None:
    """Redis's cooldowns run on its own clock, which goes on between a report and the look at
    it: what is left is short of the cooldown by at most the real time that passed, never over."""
    passed = time.monotonic() - reported_at
    assert cooling - passed - 0.01 <= observed <= cooling + 0.01, f"{observed} s left of {cooling} s after {passed:.3f} s"


@pytest.fixture(params=["in-process", "redis"])
async def pool(request: pytest.FixtureRequest) -> AsyncIterator[InProcess]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    made = backend(request.param, server)
    await made.start()
    yield made
    await made.stop()


async def with_credentials(pool: InProcess, *credentials: Credential) -> InProcess:
    pool.replace(credentials)
    await pool.settled()
    return pool


async def test_least_in_flight_per_weight(pool: InProcess) -> None:
    await with_credentials(pool, Credential("a", "ca", weight=1, max_concurrency=100),
                           Credential("b", "cb", weight=3, max_concurrency=100))
    leases = [await pool.acquire() for _ in range(40)]
    counts = {"a": 0, "b": 0}
    for lease in leases:
        counts[lease.credential.id] += 1
    assert counts == {"a": 10, "b": 30}


async def test_ties_rotate_instead_of_always_picking_the_first(pool: InProcess) -> None:
    await with_credentials(pool, Credential("a", "ca"), Credential("b", "cb"), Credential("c", "cc"))
    picked = []
    for _ in range(6):
        lease = await pool.acquire()
        picked.append(lease.credential.id)
        lease.release()
        await pool.settled()
    assert set(picked) == {"a", "b", "c"}


async def test_max_concurrency_then_busy(pool: InProcess) -> None:
    await with_credentials(pool, Credential("a", "ca", max_concurrency=2))
    first, _ = await pool.acquire(), await pool.acquire()
    with pytest.raises(AllBusy):
        await pool.acquire()
    first.release()
    first.release()  # idempotent
    await pool.settled()
    assert (await pool.acquire()).credential.id == "a"
    with pytest.raises(AllBusy):  # the second release gave back nothing
        await pool.acquire()
    assert pool.pool.total_in_flight() == 2


async def test_exponential_backoff_capped_and_reset_by_success(pool: InProcess) -> None:
    await with_credentials(pool, Credential("a", "ca"))
    for backoff in [5, 10, 20, 40, 40]:
        lease = await pool.acquire()
        reported_at = time.monotonic()
        lease.report(Outcome.RATE_LIMITED)
        lease.release()
        await pool.settled()
        with pytest.raises(AllCoolingDown) as caught:
            await pool.acquire()
        assert_cools(caught.value.retry_after, backoff, reported_at)
        pool.advance(backoff + 0.01)
    lease = await pool.acquire()
    lease.report(Outcome.OK)
    reported_at = time.monotonic()
    lease.report(Outcome.CHALLENGE, retry_after=3)
    await pool.settled()
    assert_cools(pool.cooling_for("a"), 3, reported_at)  # the strikes were reset: Retry-After wins


@pytest.mark.parametrize(("header", "cooling"), [
    ("0", 1.0),  # never an immediate retry loop: the floor
    ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0),  # a date in the past: the floor
    (None, 5.0),  # none: the backoff
    ("3", 3.0),
    ("99999999", 40.0),  # clamped to the max
], ids=["zero", "past-date", "missing", "three", "huge"])
async def test_retry_after_cools_the_same_on_both(pool: InProcess, header: str | None, cooling: float) -> None:
    await with_credentials(pool, Credential("a", "ca"))
    lease = await pool.acquire()
    reported_at = time.monotonic()
    lease.report(Outcome.RATE_LIMITED, retry_after=parse_retry_after(header))
    lease.release()
    await pool.settled()
    assert_cools(pool.cooling_for("a"), cooling, reported_at)
    assert pool.status("a").health is Health.COOLING
    with pytest.raises(AllCoolingDown) as caught:  # the store hands it out no sooner than the book says
        await pool.acquire()
    assert_cools(caught.value.retry_after, cooling, reported_at)
    pool.advance(cooling + 0.01)
    assert (await pool.acquire()).credential.id == "a"


async def test_cooled_by_challenges_only_is_all_challenged(pool: InProcess) -> None:
    await with_credentials(pool, Credential("a", "ca"), Credential("b", "cb"))
    for _ in range(2):
        lease = await pool.acquire()
        lease.report(Outcome.CHALLENGE)
        lease.release()
    await pool.settled()
    with pytest.raises(AllChallenged):
        await pool.acquire()


async def test_unauthorized_ejects_until_reinstated_or_new_cookie(pool: InProcess) -> None:
    await with_credentials(pool, Credential("a", "ca"))
    lease = await pool.acquire()
    lease.report(Outcome.UNAUTHORIZED)
    lease.release()
    await pool.settled()
    assert pool.status("a").health is Health.EJECTED and not pool.pool.is_ready()
    with pytest.raises(NoCredentials, match="rejected"):
        await pool.acquire()
    pool.pool.reinstate("a")
    await pool.settled()
    assert pool.pool.is_ready()
    (await pool.acquire()).report(Outcome.UNAUTHORIZED)
    await pool.settled()
    with pytest.raises(NoCredentials):
        await pool.acquire()
    await with_credentials(pool, Credential("a", "ca-renewed"))  # the ejection was of the old cookie
    assert (await pool.acquire()).credential.cookie == "ca-renewed"


async def test_refusal_order(pool: InProcess) -> None:
    with pytest.raises(NoCredentials, match="configured"):
        await pool.acquire()
    await with_credentials(pool, Credential("a", "ca"), Credential("b", "cb"))
    with pytest.raises(NothingLeftToTry):
        await pool.acquire(exclude=frozenset({"a", "b"}))
    lease = await pool.acquire(exclude=frozenset({"a"}))
    assert lease.credential.id == "b"
    reported_at = time.monotonic()
    lease.report(Outcome.RATE_LIMITED, retry_after=7)
    await pool.settled()
    with pytest.raises(AllCoolingDown) as caught:  # a is excluded, b cools: the cooling wins over busy
        await pool.acquire(exclude=frozenset({"a"}))
    assert_cools(caught.value.retry_after, 7, reported_at)


async def test_leases_from_before_a_reload_release_cleanly(pool: InProcess) -> None:
    await with_credentials(pool, Credential("a", "ca"))
    old = await pool.acquire()
    await with_credentials(pool, Credential("b", "cb"))
    old.release()
    await pool.settled()
    assert [s.in_flight for s in pool.pool.statuses()] == [0]


async def test_transient_errors_do_not_change_state(pool: InProcess) -> None:
    await with_credentials(pool, Credential("a", "ca"))
    lease = await pool.acquire()
    lease.report(Outcome.ERROR)
    lease.report(Outcome.TIMEOUT)
    await pool.settled()
    assert pool.status("a").health is Health.HEALTHY
    assert pool.cooling_for("a") == 0
