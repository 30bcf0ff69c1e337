"""The per-host conversion limit: real lock files, a real second process, a real event loop.

Every test waits with a deadline of seconds where the right behaviour takes milliseconds, so a
queue that stalls fails instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diarization_audio.ingest import slots as conversion_slots
from diarization_audio.ingest.slots import ConversionSlots

DEADLINE = 10.0


async def _take_in_turn(slots: ConversionSlots, jobs: int, order: list[int]) -> None:
    """`jobs` tasks ask for a slot one after another and note when they got one; the first
    `slots.count` hold theirs until every other job is waiting."""
    release = asyncio.Event()

    async def job(n: int) -> None:
        async with slots.slot():
            order.append(n)
            if n < slots.count:
                await release.wait()

    tasks = []
    for n in range(jobs):
        tasks.append(asyncio.create_task(job(n)))
        await asyncio.sleep(0)  # each starts asking before the next is made
    while len(order) < slots.count:
        await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*tasks)


def test_waiting_jobs_get_slots_in_the_order_they_asked(tmp_path: Path) -> None:
    slots = ConversionSlots(tmp_path / "slots", 1)
    slots.prepare()
    order: list[int] = []
    asyncio.run(_take_in_turn(slots, 12, order))
    assert order == list(range(12))


def test_a_slot_let_go_in_the_process_is_handed_on_without_waiting_for_the_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next job in line is woken by the release itself: with a poll interval longer than the
    deadline, the queue still empties."""
    monkeypatch.setattr(conversion_slots, "POLL_SECONDS", 3600.0)
    slots = ConversionSlots(tmp_path / "slots", 2)
    slots.prepare()
    order: list[int] = []
    asyncio.run(_take_in_turn(slots, 6, order))
    assert sorted(order) == list(range(6))


def test_cancelled_waiters_do_not_hold_up_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversion_slots, "POLL_SECONDS", 3600.0)
    slots = ConversionSlots(tmp_path / "slots", 1)
    slots.prepare()
    got: list[str] = []

    async def hold(name: str, until: asyncio.Event) -> None:
        async with slots.slot():
            got.append(name)
            await until.wait()

    async def main() -> None:
        first_done = asyncio.Event()
        first = asyncio.create_task(hold("first", first_done))
        while not got:
            await asyncio.sleep(0)
        # Second in line (the one that will look next), third, then the last.
        second = asyncio.create_task(hold("second", asyncio.Event()))
        third = asyncio.create_task(hold("third", asyncio.Event()))
        last_done = asyncio.Event()
        last = asyncio.create_task(hold("last", last_done))
        await asyncio.sleep(0.05)
        third.cancel()
        second.cancel()
        first_done.set()
        last_done.set()
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(first, last)
        assert second.cancelled() and third.cancelled()

    asyncio.run(main())
    assert got == ["first", "last"]


def test_a_slot_held_by_another_process_is_taken_once_that_process_ends(tmp_path: Path) -> None:
    """Across processes the slot is found by polling; a process that dies drops its lock."""
    directory = tmp_path / "slots"
    slots = ConversionSlots(directory, 1)
    slots.prepare()
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from filelock import FileLock
                lock = FileLock({str(directory / "slot-0.lock")!r}, timeout=0)
                lock.acquire()
                print("held", flush=True)
                sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        _take_after(holder, slots)


def _take_after(holder: subprocess.Popen[str], slots: ConversionSlots) -> None:
    """Ask for the slot `holder` holds; it must come only once `holder` has ended."""
    assert holder.stdout is not None and holder.stdin is not None
    stdin = holder.stdin
    try:
        assert holder.stdout.readline().strip() == "held"

        async def take() -> None:
            async with slots.slot():
                pass

        async def main() -> None:
            waiting = asyncio.create_task(take())
            await asyncio.sleep(0.2)
            assert not waiting.done(), "the slot was taken while another process held it"
            stdin.close()  # the holder reads end-of-file and exits
            async with asyncio.timeout(DEADLINE):
                await waiting

        asyncio.run(main())
    finally:
        holder.kill()


def test_a_waiter_cancelled_just_as_its_turn_comes_passes_the_turn_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job next in line is cancelled after the slot is let go but before the first in line
    has taken it: the first still gets the slot, and the job after the cancelled one gets it
    next."""
    monkeypatch.setattr(conversion_slots, "POLL_SECONDS", 3600.0)
    slots = ConversionSlots(tmp_path / "slots", 1)
    slots.prepare()
    got: list[str] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def take(name: str) -> None:
        async with slots.slot():
            got.append(name)

    async def holder(go: asyncio.Event) -> None:
        async with slots.slot():
            got.append("holder")
            await go.wait()
        tasks["second"].cancel()  # the first in line is woken, not yet running

    async def main() -> None:
        go = asyncio.Event()
        held = asyncio.create_task(holder(go))
        while not got:
            await asyncio.sleep(0)
        for name in ("first", "second", "third"):
            tasks[name] = asyncio.create_task(take(name))
            await asyncio.sleep(0)
        go.set()
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(held, tasks["first"], tasks["third"])
        assert tasks["second"].cancelled()

    asyncio.run(main())
    assert got == ["holder", "first", "third"]
