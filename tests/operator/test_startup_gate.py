"""kopf's startup gate with `startup_gate.apply`: it still holds every handler until every object is
indexed, and wakes its waiters only when it opens (not once per object: N² wake-ups at restart)."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from modelkiln.operator import startup_gate

OBJECTS = 500


def counting_notifications(toggles: aiotoggles.ToggleSet) -> list[int]:
    count = [0]
    notify_all = toggles._condition.notify_all

    def counted() -> None:
        count[0] += 1
        notify_all()

    toggles._condition.notify_all = counted
    return count


async def a_restart(indexed: aiotoggles.ToggleSet, passed: list[int]) -> list[asyncio.Task]:
    """What kopf's watchers and workers do with the gate: a toggle per object as its first event
    arrives, then the object's worker indexes it, drops its toggle and waits for all the others."""
    async def worker(number: int, toggle: aiotoggles.Toggle) -> None:
        await asyncio.sleep(0)
        await indexed.drop_toggle(toggle)
        await indexed.wait_for(True)
        passed.append(number)

    workers = []
    for number in range(OBJECTS):
        toggle = await indexed.make_toggle(name=f"object {number}")
        workers.append(asyncio.create_task(worker(number, toggle)))
        await asyncio.sleep(0)  # the next event arrives later
    return workers


def test_the_gate_holds_every_handler_until_the_last_object_is_indexed_and_opens_once():
    startup_gate.apply()
    startup_gate.apply()  # idempotent: main() may run twice in one process (tests)

    async def scenario() -> tuple[list[int], list[int], int]:
        indexed = aiotoggles.ToggleSet(all)
        notifications = counting_notifications(indexed)
        listing = await indexed.make_toggle(name="the resource's list")  # dropped when the list ends
        passed: list[int] = []
        workers = await a_restart(indexed, passed)
        for _ in range(10):
            await asyncio.sleep(0)
        held = list(passed)
        await indexed.drop_toggle(listing)
        await asyncio.wait_for(asyncio.gather(*workers), timeout=10)
        return held, passed, notifications[0]

    held, passed, notifications = asyncio.run(scenario())
    assert held == []  # every object indexed, but the resource's list not yet over
    assert sorted(passed) == list(range(OBJECTS))
    assert notifications == 2  # it closed once and opened once; kopf 1.45 by itself: 2 per object, 1,002 here


def test_a_toggle_turned_on_still_wakes_the_waiters_of_its_set():
    startup_gate.apply()

    async def scenario() -> tuple[bool, bool]:
        paused = aiotoggles.ToggleSet(any)  # how kopf pauses for peering: on while any toggle is on
        conflict = await paused.make_toggle(name="another operator")
        waiter = asyncio.create_task(paused.wait_for(True))
        await asyncio.sleep(0)
        early = waiter.done()
        await conflict.turn_to(True)
        await asyncio.wait_for(waiter, timeout=10)
        await paused.drop_toggle(conflict)
        return early, paused.is_on()

    early, paused_after_drop = asyncio.run(scenario())
    assert not early
    assert not paused_after_drop  # no toggle left: any() of nothing
