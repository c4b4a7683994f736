"""promptly(lock): a free lock is taken at once, a busy one waited for in turn."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from bridge.locks import promptly


async def test_a_free_lock_is_taken_without_letting_other_tasks_run_first(
    nursery: trio.Nursery,
) -> None:
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    nursery.start_soon(other)  # runs at the first pass through the scheduler
    async with promptly(trio.Lock()):
        assert ran == []
    await trio.testing.wait_all_tasks_blocked()
    assert ran == ["other"]


async def test_a_busy_lock_is_waited_for_and_nobody_overtakes_a_waiter(
    nursery: trio.Nursery,
) -> None:
    lock, order = trio.Lock(), []

    async def take(name: str) -> None:
        async with promptly(lock):
            order.append(name)
            await trio.lowlevel.checkpoint()  # hold it across a pass through the scheduler

    await lock.acquire()
    nursery.start_soon(take, "waiting first")
    await trio.testing.wait_all_tasks_blocked()
    lock.release()  # handed to the waiter: a newcomer must not slip in before it runs
    await take("newcomer")
    assert order == ["waiting first", "newcomer"]


async def test_a_capacity_limiter_is_given_back_when_the_block_fails() -> None:
    slots = trio.CapacityLimiter(1)
    try:
        async with promptly(slots):
            assert slots.borrowed_tokens == 1
            raise KeyError("boom")
    except KeyError:
        pass
    assert slots.borrowed_tokens == 0
