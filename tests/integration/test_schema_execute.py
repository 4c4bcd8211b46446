import uuid
from dataclasses import replace
from typing import Any

from domain import accounts
from domain.model import User
from infra.app import Runtime
from resolvers.context import Context
from schema import build_schema
from tests.factories import PASSWORD, make_users


class CountingUsers:
    """The real repository, counting batch reads."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[int] = []

    async def get_many(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, User]:
        self.batches.append(len(ids))
        result: dict[uuid.UUID, User] = await self.inner.get_many(ids)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_people_load_in_one_batch(runtime: Runtime) -> None:
    assert runtime.pool is not None
    people = await make_users(runtime.pool, 200, tags=("hiking", "coffee"))
    ports = runtime.require_ports()
    _, tokens = await accounts.log_in(ports.auth, people[0][1], PASSWORD, ports.clock())
    counting = CountingUsers(ports.users)
    context = Context(replace(ports, users=counting), "127.0.0.1", "req", tokens.access_token)
    fields = " ".join(f'p{i}: person(id: "{uid}") {{ displayName age interestTags {{ slug }} }}'
                      for i, (uid, _) in enumerate(people[1:51]))
    result = await build_schema().execute(f"{{ {fields} }}", context_value=context)
    assert result.errors is None
    assert result.data is not None and len(result.data) == 50
    assert result.data["p0"]["interestTags"] == [{"slug": "hiking"}, {"slug": "coffee"}]
    assert counting.batches == [50]  # one query for fifty people, not fifty queries
