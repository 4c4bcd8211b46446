import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from strawberry.extensions import SchemaExtension

from schema.hooks import KnownHooksRunner

Log = list[str]


def _extension(log: Log, name: str, *, swallow: bool = False, fail_after: bool = False) -> SchemaExtension:
    class Hook(SchemaExtension):
        def on_operation(self) -> Iterator[None]:
            log.append(f"{name} before")
            try:
                yield
            except ValueError as error:
                log.append(f"{name} saw {error}")
                if not swallow:
                    raise
            finally:
                log.append(f"{name} after")
            if fail_after:
                raise KeyError(name)

    return Hook()


class Async(SchemaExtension):
    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_operation(self) -> AsyncIterator[None]:
        self.log.append("async before")
        yield
        self.log.append("async after")


def _runner(*extensions: SchemaExtension) -> KnownHooksRunner:
    # The operation hooks read nothing of the execution context.
    return KnownHooksRunner(execution_context=None, extensions=list(extensions))  # type: ignore[arg-type]


def test_hooks_run_around_the_operation_last_in_first_out() -> None:
    log: Log = []

    async def run() -> None:
        async with _runner(_extension(log, "a"), Async(log), _extension(log, "b")).operation():
            log.append("operation")

    asyncio.run(run())
    assert log == ["a before", "async before", "b before", "operation", "b after", "async after", "a after"]


def test_an_error_reaches_every_hook_and_then_the_caller() -> None:
    log: Log = []

    async def run() -> None:
        async with _runner(_extension(log, "a"), _extension(log, "b")).operation():
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(run())
    assert log == ["a before", "b before", "b saw boom", "b after", "a saw boom", "a after"]


def test_a_hook_may_spare_earlier_hooks_an_error_or_raise_its_own() -> None:
    log: Log = []
    with pytest.raises(ValueError, match="boom"), _runner(_extension(log, "a"), _extension(log, "b", swallow=True)
                                                          ).operation():
        raise ValueError("boom")
    assert log == ["a before", "b before", "b saw boom", "b after", "a after"]

    with pytest.raises(KeyError), _runner(_extension(log, "c"), _extension(log, "d", fail_after=True)).operation():
        pass
    assert log[-1] == "c after"


def test_hooks_already_started_end_when_a_later_one_fails_to_start() -> None:
    log: Log = []

    class Broken(SchemaExtension):
        def on_operation(self) -> Iterator[None]:
            raise KeyError("broken")
            yield

    async def run() -> None:
        async with _runner(_extension(log, "a"), Broken()).operation():
            log.append("operation")

    with pytest.raises(KeyError):
        asyncio.run(run())
    assert log == ["a before", "a after"]
