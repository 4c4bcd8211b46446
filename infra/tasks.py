"""Stopping background tasks for sure."""

import asyncio
import logging

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[None], *, patience: float = 5.0) -> None:
    """Cancels `task` and waits until it has ended.

    A single cancel() is not enough: on Python 3.11 a timeout that fires as the cancellation arrives
    can swallow it (redis-py's get_message(timeout=...) does this), and the task then waits on
    forever, holding up whoever awaits it: a shutdown, or a test run's teardown. So it is cancelled
    again every 100 ms until it ends, and after `patience` seconds left behind with a log line.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
        if loop.time() > deadline and not task.done():
            log.error("background task %s ignored cancellation for %.0f s; left behind", task.get_name(), patience)
            return
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed while stopping", task.get_name(), exc_info=task.exception())
