import asyncio
import os
import secrets
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from infra.settings import Settings

WorkerMain = Callable[[Settings], Coroutine[Any, Any, None]]


def registry() -> dict[str, WorkerMain]:
    # Imported lazily so that `newfriends worker X` loads only what X needs.
    from workers import aggregator, archive_writer, chat_pusher, janitor, location_updater, photos, swipe_writer

    return {"chat-aggregator": aggregator.main, "archive-writer": archive_writer.main,
            "chat-pusher": chat_pusher.main, "janitor": janitor.main, "location-updater": location_updater.main,
            "photos": photos.main, "swipe-writer": swipe_writer.main}


def stop_on_signals() -> asyncio.Event:
    """Set on SIGTERM or SIGINT: a worker finishes what it holds and leaves its partitions."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def new_consumer_id() -> str:
    # host:pid:random, so an operator (and a test) can tell which process holds a lease.
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
