"""The shared pool's modes, one test per transition (core/shared_modes.py's `transition`,
pure: each event carries its time). tests/test_shared_pool_recovery.py and
tests/test_shared_pool.py drive the same transitions through a real Redis that is
stopped and restarted; here each one is pinned down alone, share table included."""

from __future__ import annotations

import zlib
from dataclasses import replace

import pytest

from gptomni_relay.core.pool import Credential, PoolMode
from gptomni_relay.core.shared_modes import (
    Fallback,
    HeartbeatLost,
    Observed,
    Rejoined,
    Settled,
    Settling,
    Shared,
    Shares,
    StoreFailed,
    transition,
)

LEASE, SYNC = 10.0, 0.5
FOUR = Credential("c", "session=c", max_concurrency=4)
SHARES = Shares("a", expected=2, replicas=("a", "b"))


def settling(now: float = 100.0, shares: Shares = SHARES, confirmed: bool = False) -> Settling:
    mode = transition(Fallback(shares, excess_until=now + 3), Rejoined(now, SYNC, LEASE))
    assert isinstance(mode, Settling)
    return replace(mode, confirmed=confirmed)


# --- into fallback ---------------------------------------------------------------------

def test_shared_to_fallback_when_the_store_fails() -> None:
    mode = transition(Shared(SHARES), StoreFailed(now=100.0, lease_seconds=LEASE))
    assert mode == Fallback(replace(SHARES, before=("a", "b")), excess_until=110.0)
    assert (mode.pool_mode, mode.store_up) == (PoolMode.FALLBACK, False)


def test_shared_to_fallback_when_the_heartbeat_was_lost() -> None:
    mode = transition(Shared(SHARES), HeartbeatLost(now=100.0, lease_seconds=LEASE))
    assert mode == Fallback(replace(SHARES, before=("a", "b")), excess_until=110.0)


def test_a_failure_in_fallback_is_the_same_outage() -> None:
    mode = Fallback(replace(SHARES, before=("a", "b")), excess_until=110.0)
    assert transition(mode, StoreFailed(now=105.0, lease_seconds=LEASE)) == mode


def test_settling_falls_back_into_the_same_outage_until_the_store_is_confirmed() -> None:
    before = Fallback(replace(SHARES, before=("a", "b")), excess_until=103.0)
    mode = transition(before, Rejoined(100.0, SYNC, LEASE))
    assert transition(mode, StoreFailed(now=101.0, lease_seconds=LEASE)) == before  # its excess window runs on


def test_settling_confirmed_then_failing_is_a_new_outage() -> None:
    mode = transition(settling(), Observed(("a", "b"), {}))
    again = transition(mode, StoreFailed(now=120.0, lease_seconds=LEASE))
    assert isinstance(again, Fallback) and again.excess_until == 130.0


# --- back through settling -------------------------------------------------------------

def test_fallback_to_settling_when_rejoined() -> None:
    outage = Fallback(replace(SHARES, before=("a", "b")), excess_until=103.0)
    mode = transition(outage, Rejoined(now=100.0, sync_seconds=SYNC, lease_seconds=LEASE))
    assert mode == Settling(outage.shares, until=100.75, deadline=110.75, outage=outage)
    assert (mode.pool_mode, mode.store_up) == (PoolMode.FALLBACK, True)  # through the store, within the share


def test_observed_confirms_settling_and_refreshes_its_share_table() -> None:
    mode = transition(settling(), Observed(("b", "a", "c"), {"c": 1}))
    assert isinstance(mode, Settling) and mode.confirmed
    assert mode.shares.replicas == ("a", "b", "c") and mode.shares.others_excess == {"c": 1}


@pytest.mark.parametrize("mode", [Shared(SHARES), Fallback(SHARES, excess_until=5.0)], ids=["shared", "fallback"])
def test_observed_refreshes_the_share_table_in_any_mode(mode: Shared | Fallback) -> None:
    seen = transition(mode, Observed(("a",), {"c": 2}))
    assert type(seen) is type(mode) and seen.shares.replicas == ("a",) and seen.shares.others_excess == {"c": 2}


def test_settling_to_shared_once_the_tick_and_a_half_passed_and_the_others_are_back() -> None:
    mode = transition(settling(shares=replace(SHARES, before=("a", "b"), replicas=("a",))), Observed(("a",), {}))
    assert transition(mode, Settled(now=100.5, all_registered=True)) == mode  # too soon
    assert transition(mode, Settled(now=101.0, all_registered=True)) == mode  # b is not back yet
    back = transition(mode, Observed(("a", "b"), {}))
    assert transition(back, Settled(now=101.0, all_registered=True)) == Shared(replace(back.shares, before=None))


def test_settling_to_shared_after_a_lease_time_more_without_a_replica_that_died() -> None:
    mode = transition(settling(shares=replace(SHARES, before=("a", "b"))), Observed(("a",), {}))
    assert transition(mode, Settled(now=110.7, all_registered=True)) == mode
    assert isinstance(transition(mode, Settled(now=110.8, all_registered=True)), Shared)


def test_settling_stays_while_a_lease_is_not_in_the_store() -> None:
    mode = transition(settling(), Observed(("a", "b"), {}))
    assert transition(mode, Settled(now=200.0, all_registered=False)) == mode


def test_settling_at_start_is_shared_at_once() -> None:
    assert isinstance(transition(settling(), Settled(now=100.0, all_registered=True, at_start=True)), Shared)
    assert isinstance(transition(settling(), Settled(now=100.0, all_registered=False, at_start=True)), Settling)


@pytest.mark.parametrize(("mode", "event"), [
    (Shared(SHARES), Rejoined(1.0, SYNC, LEASE)),
    (Shared(SHARES), Settled(1.0, all_registered=True)),
    (Fallback(SHARES), HeartbeatLost(1.0, LEASE)),
    (Fallback(SHARES), Settled(1.0, all_registered=True, at_start=True)),
], ids=["rejoined-while-shared", "settled-while-shared", "heartbeat-in-fallback", "settled-in-fallback"])
def test_events_that_do_not_apply_leave_the_mode(mode: Shared | Fallback, event: object) -> None:
    assert transition(mode, event) == mode  # type: ignore[arg-type]


def test_not_an_event() -> None:
    with pytest.raises(TypeError):
        transition(Shared(SHARES), "tick")  # type: ignore[arg-type]


# --- the share table -------------------------------------------------------------------

def test_the_fallback_share_counts_the_others_excess_for_one_lease_time() -> None:
    mode = Fallback(replace(SHARES, others_excess={"c": 1}), excess_until=110.0)
    assert mode.limit(FOUR, now=109.9) == 1  # 4 // 2, less 1 the others hold beyond theirs
    assert mode.limit(FOUR, now=110.0) == 2  # their leases would have expired unrenewed


def test_settling_keeps_the_smaller_of_the_shares_before_and_now() -> None:
    # A credential whose remainder slot (3 over 2 replicas) goes to rank 0: "a" before the outage.
    credential_id = next(f"k{i}" for i in range(100) if zlib.crc32(f"k{i}".encode()) % 2 == 0)
    three = Credential(credential_id, "session=k", max_concurrency=3)
    alone_now = replace(SHARES, replicas=("b",), before=("a", "b"))
    b_back_first = settling(shares=replace(alone_now, replica="b"))
    assert Shares("b", 2, replicas=("b",)).base(three, with_before=False) == 2  # alone, b would take rank 0's
    assert b_back_first.limit(three, now=100.0) == 1  # but a still counts on the old ranks


def test_shared_drops_the_view_from_before_the_outage() -> None:
    mode = transition(settling(shares=replace(SHARES, before=("a", "b", "c"))), Settled(now=100.0, all_registered=True,
                                                                                           at_start=True))
    assert isinstance(mode, Shared) and mode.shares.before is None
    assert mode.limit(FOUR, now=0.0) == 2


def test_the_shares_add_up_to_the_limit_at_most() -> None:
    for limit in range(1, 12):
        credential = Credential(f"k{limit}", "session=k", max_concurrency=limit)
        replicas = ("a", "b", "c")
        total = sum(Shares(r, expected=3, replicas=replicas).base(credential, with_before=False) for r in replicas)
        assert total == limit


def test_excess_of_others_counts_beyond_their_shares_and_all_of_a_dead_replica() -> None:
    shares = Shares("a", expected=2, replicas=("a", "b"))
    assert shares.excess_of({"c": {"b": 3, "gone": 1}}, {"c": FOUR}) == {"c": 2}  # b: 3 - 2, gone: 1 - 0
    assert shares.excess_of({"c": {"b": 2}, "unknown": {"b": 9}}, {"c": FOUR}) == {}
