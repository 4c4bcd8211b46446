"""strawberry's extension hooks, wrapped once per extension class instead of once per operation.

For every operation strawberry asks each extension for each of its four lifecycle hooks, inspects
the function it finds and wraps it in a fresh context manager (functools.wraps included): with the
extensions this schema runs, a tenth of a millisecond of every request, as much as a resolver
that reads Redis. The hooks are class attributes, so what that inspection decides is the same for
every instance: it is worked out once per class and hook, and each operation only binds it to
its own extension instances. The hooks then run exactly as strawberry runs them.
"""

import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from functools import partial
from types import TracebackType
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import (
    ExecutingContextManager,
    ExtensionContextManagerBase,
    OperationContextManager,
    ParsingContextManager,
    ValidationContextManager,
    WrappedHook,
)
from strawberry.extensions.runner import SchemaExtensionsRunner

_Wrapper = tuple[Callable[[SchemaExtension], Any], bool] | None  # context manager factory, async
_WRAPPERS: dict[tuple[type, str], _Wrapper] = {}


def _wrapper(cls: type, name: str) -> _Wrapper:
    hook = getattr(cls, name)
    if hook is getattr(SchemaExtension, name):
        return None  # the extension does not take part in this step
    if inspect.isgeneratorfunction(hook):
        return contextlib.contextmanager(hook), False
    if inspect.isasyncgenfunction(hook):
        return contextlib.asynccontextmanager(hook), True
    if not callable(hook):
        raise ValueError(f"Hook {name} on {cls} must be callable, received {hook!r}")
    if inspect.iscoroutinefunction(hook):
        @contextlib.asynccontextmanager
        async def awaited(extension: SchemaExtension) -> AsyncIterator[None]:
            await hook(extension)
            yield

        return awaited, True

    @contextlib.contextmanager
    def called(extension: SchemaExtension) -> Iterator[None]:
        hook(extension)
        yield

    return called, False


class _Known(ExtensionContextManagerBase):
    def get_hook(self, extension: SchemaExtension) -> WrappedHook | None:
        key = (type(extension), self.HOOK_NAME)
        try:
            wrapper = _WRAPPERS[key]
        except KeyError:
            wrapper = _WRAPPERS[key] = _wrapper(*key)
        if wrapper is None:
            return None
        make, is_async = wrapper
        return WrappedHook(extension=extension, hook=partial(make, extension), is_async=is_async)


class _Validation(_Known, ValidationContextManager):
    pass


class _Parsing(_Known, ParsingContextManager):
    pass


class _Executing(_Known, ExecutingContextManager):
    pass


_Step = Generator[None, None, None] | AsyncGenerator[None, None]


class _LeanOperation:
    """The operation hooks, run as strawberry runs them, holding only the hooks' own suspended
    generators while the operation lasts. A subscription's operation lasts as long as it does, and
    strawberry's runner would keep an exit stack (its deque and callbacks) and a context manager
    per hook for all that time: about 2 KiB per idle subscription."""

    __slots__ = ("_extensions", "_running")

    def __init__(self, extensions: list[SchemaExtension]) -> None:
        self._extensions = extensions
        self._running: list[_Step] = []

    def _hooks(self) -> Iterator[tuple[SchemaExtension, Callable[[SchemaExtension], Any]]]:
        for extension in self._extensions:
            hook = type(extension).on_operation
            if hook is not SchemaExtension.on_operation:
                yield extension, hook

    def __enter__(self) -> None:
        try:
            for extension, hook in self._hooks():
                if inspect.isasyncgenfunction(hook) or inspect.iscoroutinefunction(hook):
                    raise RuntimeError(f"SchemaExtension hook {extension}.on_operation failed to complete "
                                       "synchronously.")
                self._start(hook(extension))
        except BaseException as error:  # the hooks already started end, as an exit stack would end them
            self.__exit__(type(error), error, error.__traceback__)
            raise

    async def __aenter__(self) -> None:
        try:
            for extension, hook in self._hooks():
                outcome = hook(extension)
                if isinstance(outcome, AsyncGenerator):
                    await anext(outcome)
                    self._running.append(outcome)
                elif inspect.isawaitable(outcome):  # a plain function runs before, and has nothing to hold
                    await outcome
                else:
                    self._start(outcome)
        except BaseException as error:
            await self.__aexit__(type(error), error, error.__traceback__)
            raise

    def _start(self, outcome: object) -> None:
        if isinstance(outcome, Generator):
            next(outcome)
            self._running.append(outcome)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        pending = error
        running, self._running = self._running, []
        for step in reversed(running):
            assert isinstance(step, Generator)
            pending = _finish(step, pending)
        return self._outcome(error, pending)

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> bool:
        # Like an exit stack: last in, first out, each hook seeing what the later ones left.
        pending = error
        running, self._running = self._running, []
        for step in reversed(running):
            pending = _finish(step, pending) if isinstance(step, Generator) else await _finish_async(step, pending)
        return self._outcome(error, pending)

    @staticmethod
    def _outcome(error: BaseException | None, pending: BaseException | None) -> bool:
        # As in strawberry, a hook that swallows the operation's error spares the earlier hooks
        # from it, not the caller.
        if pending is not None and pending is not error:
            raise pending
        return False


def _finish(step: Generator[Any, None, None], pending: BaseException | None) -> BaseException | None:
    """Ends one hook: None when it ended cleanly, else the error it hands to the earlier hooks."""
    try:
        step.throw(pending) if pending is not None else next(step)
    except StopIteration:
        return None
    except BaseException as failure:
        return failure
    return RuntimeError(f"{step!r} yielded more than once")


async def _finish_async(step: AsyncGenerator[Any, None], pending: BaseException | None) -> BaseException | None:
    try:
        await (step.athrow(pending) if pending is not None else anext(step))
    except StopAsyncIteration:
        return None
    except BaseException as failure:
        return failure
    return RuntimeError(f"{step!r} yielded more than once")


class KnownHooksRunner(SchemaExtensionsRunner):
    def operation(self) -> OperationContextManager:
        return _LeanOperation(self.extensions)  # type: ignore[return-value]  # the same two protocols

    def validation(self) -> ValidationContextManager:
        return _Validation(self.extensions)

    def parsing(self) -> ParsingContextManager:
        return _Parsing(self.extensions)

    def executing(self) -> ExecutingContextManager:
        return _Executing(self.extensions)
