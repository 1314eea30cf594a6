"""Work a turn starts after its answer is delivered (facts to remember, a session's title).

It runs as background tasks, off the latency path. A front end that exits after a turn (`tandem ask`)
waits for them when it closes the Redis connection they write through (`agent.turn.build.open_redis`,
`Assistant.aclose`); tests await `wait_for_background()`. Each job bounds and logs its own failures:
none may affect the turn it follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ['BACKGROUND_TIMEOUT', 'run_in_background', 'wait_for_background']

BACKGROUND_TIMEOUT = 60.0
"""Seconds one background job may take before it is abandoned."""

_pending: set[asyncio.Task[Any]] = set()
T = TypeVar('T')


def run_in_background(job: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start `job` on the running loop, held until it ends (the loop keeps only weak references)."""
    task = asyncio.get_running_loop().create_task(job, name=name)
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return task


async def wait_for_background(timeout: float | None = BACKGROUND_TIMEOUT) -> None:
    """Wait until the jobs started on this event loop have finished (or `timeout` seconds passed)."""
    loop = asyncio.get_running_loop()
    tasks = [task for task in _pending if task.get_loop() is loop and not task.done()]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
