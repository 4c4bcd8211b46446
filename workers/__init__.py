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
