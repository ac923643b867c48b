"""db/aio.py `Grouped` with a stand-in statement (an asyncio coroutine that takes a few
milliseconds, or waits on an event to play a statement stuck on a lock): no database, the
grouping rules alone. The stand-in settles each member with its item, as a real `run` does."""

from __future__ import annotations

import asyncio
from typing import Any

from db.aio import Grouped, Waiting


class Statements:
    def __init__(self) -> None:
        self.in_flight = 0
        self.groups: list[list[str]] = []
        self.concurrency: list[int] = []  # statements on their way as each one starts
        self.stuck = asyncio.Event()
        self.stuck_entered = asyncio.Event()

    async def run(self, url: str, group: list[Waiting[str]]) -> None:
        self.in_flight += 1
        self.groups.append([w.item for w in group])
        self.concurrency.append(self.in_flight)
        try:
            if any(w.item == "stuck" for w in group):
                self.stuck_entered.set()
                await self.stuck.wait()
            else:
                await asyncio.sleep(0.005)
        finally:
            self.in_flight -= 1
        for w in group:
            w.settle(w.item)


def test_a_stuck_statement_is_bypassed_and_then_one_statement_at_a_time_again() -> None:
    """Under a steady stream of calls: while one statement is stuck the others go around it;
    once it returns, one statement at a time again (not the flushers of the stall, each still
    running), so groups stay large."""

    async def scenario() -> tuple[Statements, list[Any], list[Any], int]:
        st = Statements()
        grouped: Grouped[str] = Grouped(st.run, 32, stall_seconds=0.01)
        stuck = asyncio.ensure_future(grouped("db", "stuck"))
        await st.stuck_entered.wait()
        calls = []
        released_at = 0
        for i in range(300):
            calls.append(asyncio.ensure_future(grouped("db", f"y{i}")))
            await asyncio.sleep(0.001)
            if i == 100:
                assert not stuck.done() and any(c.done() for c in calls)  # went around it
                st.stuck.set()
                await stuck
                released_at = len(st.groups)  # statements started before it returned
        results = await asyncio.wait_for(asyncio.gather(*calls), 10)
        return st, results, [await stuck], released_at

    st, results, stuck, released_at = asyncio.run(scenario())
    assert stuck == ["stuck"] and results == [f"y{i}" for i in range(300)]
    after = st.concurrency[released_at + 1 :]
    assert after and max(after) == 1, st.concurrency
    assert len(st.groups) < 300  # grouped


def test_a_caller_cancelled_while_waiting_is_not_sent() -> None:
    async def scenario() -> Statements:
        st = Statements()
        grouped: Grouped[str] = Grouped(st.run, 32, stall_seconds=10)
        stuck = asyncio.ensure_future(grouped("db", "stuck"))
        await st.stuck_entered.wait()
        gone = asyncio.ensure_future(grouped("db", "gone"))
        kept = asyncio.ensure_future(grouped("db", "kept"))
        await asyncio.sleep(0)
        gone.cancel()
        st.stuck.set()
        assert await kept == "kept" and await stuck == "stuck"
        return st

    st = asyncio.run(scenario())
    assert st.groups == [["stuck"], ["kept"]]
