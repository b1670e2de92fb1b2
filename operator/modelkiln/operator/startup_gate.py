"""kopf's startup gate, in linear time: what lets a restarted operator with 1,000 models resync in seconds.

kopf holds every handler until every object of every indexed resource has been indexed once
(a reconcile must not see half an index: it would recreate a child it has not seen yet). The gate
is a `ToggleSet(all)` with one toggle per object. kopf 1.45 notifies the set's condition on every
toggle it adds or drops, and each notification wakes every worker waiting at the gate, which takes
the lock in turn only to find the gate still closed: for N objects, N² wake-ups. With 1,000 models
(5,000 indexed objects: models, Deployments, Jobs, 2 Services each) a restarted operator took 84 s,
75% of it there; 9.6 s with this (BENCHMARKS.md).

`apply` makes adding and dropping a toggle notify only when it changes the state of the set, which
is the only thing a waiter of the set waits for (a waiter of one toggle waits for that toggle's
own state, and `Toggle.turn_to` still notifies every time). Written for kopf upstream
(kopf/_cogs/aiokits/aiotoggles.py); until it lands there, the operator applies it at start.
"""

from __future__ import annotations

from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles


async def _make_toggle(self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    await _drop_toggles(self, (toggle,))


def apply() -> None:
    """Replace kopf's ToggleSet methods that notify on every change (idempotent)."""
    aiotoggles.ToggleSet.make_toggle = _make_toggle
    aiotoggles.ToggleSet.drop_toggles = _drop_toggles
    aiotoggles.ToggleSet.drop_toggle = _drop_toggle
