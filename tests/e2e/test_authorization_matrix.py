"""The authorization matrix: every root field, and every object field that carries someone's data,
asked by a stranger, by someone the owner blocked, by someone who unmatched her and by nobody,
over HTTP and WebSocket.

The documents are generated from the served schema (introspection), selecting everything a field
can reach, so a field added to a type is asked for as soon as it exists; a root field or a type the
matrix does not know fails the test, by name. What may not be seen does not exist: asking
with the owner's id must answer exactly what asking with an id that never existed answers.
"""
import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets
from graphql import (
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    build_client_schema,
    get_introspection_query,
    get_named_type,
    is_leaf_type,
    is_required_argument,
)

from domain.ids import new_id
from infra.settings import Settings
from tests.e2e.chats import LEGACY_WS, TRANSPORT_WS, Socket, matched_pair, open_socket, send, worker
from tests.e2e.conftest import Account, gql, sign_up, ws_url

# The open South Pacific: no other test, nor the demo population, puts anyone near it.
PLACE = {"latitude": -47.25, "longitude": -139.5}


@dataclass(frozen=True)
class Case:
    """How one root field treats someone else's data.

    With `targets`, the field takes one of the owner's objects by id (`$id`, named as in World.ids)
    and must answer a stranger as it answers an id that never existed, with `refusal` among its
    codes. Without, it only ever acts on the caller's own data. No answer may hold anything of the
    owner's. `blocked_only`: strangers may legitimately use it on the owner (swipe, block);
    only someone the owner blocked must find nobody. `throwaway`: it ends the caller's session or
    account, so each call gets an account of its own.
    """

    args: str = ""
    variables: str = ""
    targets: tuple[str, ...] = ()
    refusal: str = "NOT_FOUND"
    blocked_only: bool = False
    anyone_may: bool = False  # any signed-in person may use it on the owner: only leaks are checked
    stranger_reads: bool = False  # a stranger may read it: only leaks are checked
    throwaway: bool = False
    values: dict[str, Any] = field(default_factory=dict)


PUBLIC = {
    "interestTags": "the tag catalogue",
    "signUp": "creates the caller's own account",
    "logIn": "needs the account's password; an unknown email answers the same (checked below)",
    "refreshToken": "needs the caller's own refresh token",
}

ID = "($id: ID!)"
MATRIX: dict[str, Case] = {
    # Queries
    "me": Case(),
    "person": Case("(id: $id)", ID, ("ann",), blocked_only=True, stranger_reads=True),
    "matches": Case("(first: 5)"),
    "nearbyCandidates": Case("(first: 20)"),
    "myLocation": Case(),
    "messages": Case("(chatId: $id, last: 5)", ID, ("chat",)),
    # Mutations
    "logOut": Case(throwaway=True),
    "logOutEverywhere": Case(throwaway=True),
    # With the caller's own password (every account of the suite has it): the account that goes
    # must be the caller's, never Ann's (checked at the end).
    "deleteAccount": Case("(password: $password)", "($password: String!)", throwaway=True,
                          values={"password": "a long enough password"}),
    "updateProfile": Case("(input: {})"),
    "updateLocation": Case("(latitude: $latitude, longitude: $longitude, accuracyMeters: 20)",
                           "($latitude: Float!, $longitude: Float!)", values=PLACE),
    "like": Case("(userId: $id)", ID, ("ann",), blocked_only=True),
    "dislike": Case("(userId: $id)", ID, ("ann",), blocked_only=True),
    "superLike": Case("(userId: $id)", ID, ("ann",), blocked_only=True),
    "undoLastSwipe": Case(),
    "unmatch": Case("(matchId: $id)", ID, ("chat",)),
    "block": Case("(userId: $id)", ID, ("ann",), blocked_only=True),
    # Anyone who exists may be reported, across a block too (a harasser who blocks first must not
    # escape a report): only what it answers is checked. A report blocks, so each caller is new.
    "report": Case("(userId: $id, reason: SPAM)", ID, ("ann",), anyone_may=True, throwaway=True),
    "requestPhotoUpload": Case('(contentType: "image/jpeg", byteSize: 1000)'),
    "confirmPhotoUpload": Case("(uploadId: $id)", ID, ("photo", "upload")),
    # Not one of yours: the ids must be exactly yours, the same refusal as for ids of nobody's.
    "reorderPhotos": Case("(photoIds: [$id])", ID, ("photo",), refusal="INVALID_INPUT"),
    "deletePhoto": Case("(photoId: $id)", ID, ("photo",)),
    "sendMessage": Case('(chatId: $id, clientMessageId: "matrix-1", text: "hello")', ID, ("chat",)),
    "markRead": Case("(chatId: $id, upToSeq: 1)", ID, ("chat",)),
    "setTyping": Case("(chatId: $id)", ID, ("chat",)),
    # Subscriptions (checked on both subprotocols)
    "myEvents": Case(),
    "chatEvents": Case("(chatId: $id, afterSeq: 0)", ID, ("chat",)),
}

# Types without anyone's data: errors, the catalogue, page structure.
NO_USER_DATA = {
    "AuthError", "InputError", "LimitError", "NotFoundError", "StateError", "Done", "InterestTag",
    "PageInfo", "MessagePageInfo", "CandidateConnection", "CandidateEdge", "MatchConnection", "MatchEdge",
    "MessageConnection", "MessageEdge", "PhotoList", "UploadHeader",
}
# Every field that carries a person's data, by type. A type or field missing here fails the test.
USER_DATA: dict[str, set[str]] = {
    "Me": {"id", "email", "displayName", "birthDate", "age", "gender", "bio", "showMe", "interestTags",
           "discovery", "visibility", "showActivity", "showReadReceipts", "createdAt", "photos"},
    "DiscoverySettings": {"ageMin", "ageMax", "maxDistanceKm"},
    "AuthPayload": {"accessToken", "accessTokenExpiresAt", "refreshToken", "refreshTokenExpiresAt", "me"},
    "Person": {"id", "displayName", "age", "gender", "bio", "interestTags", "photos"},
    "Photo": {"id", "state", "rejection", "sizes", "url", "createdAt"},
    "PhotoSize": {"width", "height", "url"},
    "PhotoUpload": {"uploadId", "url", "method", "headers", "expiresAt"},
    "PhotoChanged": {"photo"},
    "ProfileChanged": {"me"},
    "MyLocation": {"source", "updatedAt", "cellSizeKm"},
    "Candidate": {"person", "whyShown"},
    "WhyShown": {"sharedTags", "distance", "distanceLabel", "activeRecently", "superLikedYou"},
    "Swipe": {"person", "direction", "superLike", "swipedAt"},
    "Match": {"id", "person", "createdAt", "chatId", "lastMessage", "unreadCount", "presence"},
    "MatchCreated": {"match"},
    "MatchEnded": {"matchId"},
    "Message": {"id", "chatId", "seq", "senderId", "fromMe", "clientMessageId", "text", "sentAt"},
    "MessageSent": {"message"},
    "NewMessage": {"message"},
    "ReadReceipt": {"chatId", "userId", "upToSeq"},
    "ReadState": {"chatId", "upToSeq"},
    "Typing": {"chatId", "userId", "expiresInSeconds"},
    "ChatClosed": {"chatId"},
}


def selection(schema: GraphQLSchema, type_: Any, reached: set[str], path: tuple[str, ...] = ()) -> str:
    """Everything below a field of this type, every union member and every field without a required
    argument; a type already on the path only says its name (no cycles)."""
    named = get_named_type(type_)
    if is_leaf_type(named):
        return ""
    if isinstance(named, GraphQLUnionType | GraphQLInterfaceType):
        members = schema.get_possible_types(named)
        return "{ __typename " + " ".join(
            f"... on {m.name} {selection(schema, m, reached, path)}" for m in members) + " }"
    assert isinstance(named, GraphQLObjectType)
    if named.name in path:
        return "{ __typename }"
    parts = ["__typename"]
    for name, child in named.fields.items():
        if any(is_required_argument(a) for a in child.args.values()):
            continue  # needs a probe of its own: the coverage check names it
        reached.add(f"{named.name}.{name}")
        parts.append(name + " " + selection(schema, child.type, reached, (*path, named.name)))
    return "{ " + " ".join(parts) + " }"


@dataclass
class Probe:
    field: str
    kind: str  # query, mutation, subscription
    case: Case
    document: str
    reached: set[str]


def probes(schema: GraphQLSchema) -> dict[str, Probe]:
    found: dict[str, Probe] = {}
    for kind, root in (("query", schema.query_type), ("mutation", schema.mutation_type),
                       ("subscription", schema.subscription_type)):
        for name, root_field in (root.fields.items() if root else ()):
            case = MATRIX.get(name, Case())
            reached: set[str] = set()
            body = selection(schema, root_field.type, reached)
            document = f"{kind} Matrix{case.variables} {{ {name}{case.args} {body} }}"
            found[name] = Probe(name, kind, case, document, reached)
    return found


@dataclass
class World:
    """Ann owns everything; Bob is her match; Sam is a stranger with a match of his own (with Bob);
    Ann blocked Eve; Dan was Ann's match until he unmatched her. Ids and texts of Ann's that nobody
    else may ever read are the markers."""

    ann: Account
    bob: Account
    sam: Account
    eve: Account
    dan: Account
    ids: dict[str, str]
    markers: dict[str, str]
    schema: GraphQLSchema
    probes: dict[str, Probe]

    @property
    def others(self) -> dict[str, Account]:
        return {"Eve (blocked)": self.eve, "Dan (unmatched)": self.dan, "Sam (stranger)": self.sam}

    def leaks(self, answer: Any, caller: Account) -> list[str]:
        text = json.dumps(answer)
        # A stranger may see Ann's public profile (her id with it); nobody else may see her at all.
        allowed = {"ann"} if caller is self.sam else set()
        return [name for name, value in self.markers.items() if name not in allowed and value in text]


UPLOAD = """mutation { requestPhotoUpload(contentType: "image/jpeg", byteSize: 4000) {
  __typename ... on PhotoUpload { uploadId } ... on Error { code message } } }"""
CONFIRM = "mutation($id: ID!) { confirmPhotoUpload(uploadId: $id) { __typename ... on Photo { id state } } }"
LOCATE = """mutation($latitude: Float!, $longitude: Float!) {
  updateLocation(latitude: $latitude, longitude: $longitude, accuracyMeters: 20) { __typename } }"""
NEARBY_IDS = "{ nearbyCandidates(first: 100) { edges { node { person { id } } } } }"
BLOCK = "mutation($id: ID!) { block(userId: $id) { __typename } }"
UNMATCH = "mutation($id: ID!) { unmatch(matchId: $id) { __typename } }"
LIKE = "mutation($id: ID!) { like(userId: $id) { __typename } }"
PROFILE = "mutation($bio: String!) { updateProfile(input: {bio: $bio}) { __typename } }"
ANN_STATE = """{ me { email bio photos { id } } matches { edges { node { id } } }
  messages(chatId: "%s", last: 20) { edges { node { text } } } }"""


async def _served_schema(api: str) -> GraphQLSchema:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{api}/graphql", json={"query": get_introspection_query()})
    return build_client_schema(response.json()["data"])


async def _until(check: Any, what: str) -> None:
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen in time")


@pytest.fixture(scope="module")
def matrix_workers(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    logs = tmp_path_factory.mktemp("matrix-workers")
    with worker(settings, "swipe-writer", logs / "swipe-writer.log"), \
            worker(settings, "location-updater", logs / "location-updater.log"):
        yield


@pytest.fixture(scope="module")
async def world(api: str, matrix_workers: None) -> World:
    ann, bob, chat = await matched_pair(api)
    sam, eve, dan = await sign_up(api), await sign_up(api), await sign_up(api)
    text = f"only for bob {uuid.uuid4().hex}"
    assert (await send(api, ann, chat, text))["__typename"] == "Message"
    uploads = []
    for _ in range(2):
        ticket = (await gql(api, UPLOAD, {}, ann.access_token))["data"]["requestPhotoUpload"]
        assert ticket["__typename"] == "PhotoUpload", ticket
        uploads.append(ticket["uploadId"])
    photo = (await gql(api, CONFIRM, {"id": uploads[0]}, ann.access_token))["data"]["confirmPhotoUpload"]
    assert photo["__typename"] == "Photo", photo
    # Eve liked Ann just before Ann blocked her: Eve's own swipe must not lead her back to Ann.
    assert (await gql(api, LIKE, {"id": ann.id}, eve.access_token))["data"]["like"]["__typename"] == "Swipe"
    assert (await gql(api, BLOCK, {"id": eve.id}, ann.access_token))["data"]["block"]["__typename"] == "Done"
    await gql(api, LIKE, {"id": dan.id}, ann.access_token)
    await gql(api, LIKE, {"id": ann.id}, dan.access_token)
    for who in (ann, sam, eve, dan):
        assert (await gql(api, LOCATE, PLACE, who.access_token))["data"]["updateLocation"]["__typename"] \
            == "MyLocation"
    # Sam has a match and a chat of his own, so his answers are not empty by default.
    await gql(api, LIKE, {"id": bob.id}, sam.access_token)
    await gql(api, LIKE, {"id": sam.id}, bob.access_token)

    async def sam_matched() -> bool:
        return bool((await gql(api, "{ matches { edges { node { id } } } }", {}, sam.access_token))
                    ["data"]["matches"]["edges"])

    async def sam_sees_ann() -> bool:
        edges = (await gql(api, NEARBY_IDS, {}, sam.access_token))["data"]["nearbyCandidates"]["edges"]
        return ann.id in {e["node"]["person"]["id"] for e in edges}

    await _until(sam_matched, "Sam's match")
    ended = (await gql(api, "{ matches { edges { node { id } } } }", {}, dan.access_token))["data"]["matches"]
    assert (await gql(api, UNMATCH, {"id": ended["edges"][0]["node"]["id"]}, dan.access_token)
            )["data"]["unmatch"]["__typename"] == "Done"
    # The control for the blocked one: a stranger in the same place does find Ann.
    await _until(sam_sees_ann, "Ann appearing in Sam's candidates")
    schema = await _served_schema(api)
    ids = {"ann": ann.id, "chat": chat, "photo": photo["id"], "upload": uploads[1]}
    markers = {**ids, "email": ann.email, "text": text, "confirmed upload": uploads[0]}
    return World(ann, bob, sam, eve, dan, ids, markers, schema, probes(schema))


def codes(answer: Any) -> set[str]:
    """Top-level error codes and the codes of error members, wherever they are."""
    found: set[str] = set()
    pending = [answer]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if isinstance(item.get("code"), str):
                found.add(item["code"])
            extensions = item.get("extensions")
            if isinstance(extensions, dict) and isinstance(extensions.get("code"), str):
                found.add(extensions["code"])
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


def same_as_nobody(mine: Any, nobodys: Any, tried: str, unknown: str) -> bool:
    return json.dumps(mine, sort_keys=True).replace(tried, "<id>") == \
        json.dumps(nobodys, sort_keys=True).replace(unknown, "<id>")


def variables(case: Case, value: str | None) -> dict[str, Any]:
    found = dict(case.values)
    if value is not None:
        found["id"] = value
    return found


async def over_socket(socket: Socket, probe: Probe, values: dict[str, Any]) -> dict[str, Any]:
    op_id = uuid.uuid4().hex
    await socket.start(op_id, probe.document, values)
    frame = await socket.frame(op_id)
    return {"type": frame["type"], "payload": frame.get("payload")}


# Values only their owner may see: no type but these may have a field of that name.
PRIVATE_FIELDS = {"email", "birthDate", "password", "accessToken", "refreshToken", "latitude", "longitude",
                  "geohash", "position", "distanceKm"}
PRIVATE_OWNERS = {"Me", "AuthPayload"}


def unknown_fields(served: GraphQLSchema) -> list[str]:
    problems = []
    roots = [t for t in (served.query_type, served.mutation_type, served.subscription_type) if t]
    for root in roots:
        for name in root.fields:
            if name not in MATRIX and name not in PUBLIC:
                problems.append(f"root field {root.name}.{name} is not in the authorization matrix"
                                " (MATRIX, or PUBLIC if it carries nobody's data)")
    served_roots = {name for root in roots for name in root.fields}
    problems += [f"the matrix names {name}, which the schema no longer has"
                 for name in sorted((MATRIX.keys() | PUBLIC.keys()) - served_roots)]
    for type_ in served.type_map.values():
        if not isinstance(type_, GraphQLObjectType) or type_.name.startswith("__") or type_ in roots:
            continue
        if type_.name not in PRIVATE_OWNERS:
            problems += [f"{type_.name}.{name} looks private and is not the owner's own type"
                         for name in sorted(type_.fields.keys() & PRIVATE_FIELDS)]
        if type_.name in NO_USER_DATA:
            continue
        known = USER_DATA.get(type_.name)
        for name in type_.fields:
            if known is None or name not in known:
                problems.append(f"{type_.name}.{name} is not in the authorization matrix (USER_DATA, or the"
                                " type in NO_USER_DATA)")
    reached = set().union(*(p.reached for p in probes(served).values()))
    for type_name, names in USER_DATA.items():
        owner = served.type_map.get(type_name)
        for name in names:
            if isinstance(owner, GraphQLObjectType) and name in owner.fields \
                    and f"{type_name}.{name}" not in reached:
                problems.append(f"{type_name}.{name} is reached by no probe (it needs arguments: give it one)")
    return problems


def _callers(world: World, case: Case) -> dict[str, Account]:
    everyone = world.others
    if case.blocked_only and not case.stranger_reads:
        everyone = {who: caller for who, caller in everyone.items() if caller is not world.sam}
    return everyone


async def _stranger_problems(world: World, probe: Probe, caller: Account, who: str,
                             ask: Any, fresh: Any) -> list[str]:
    """What is wrong with the answers to one probe for one caller; `ask(probe, values, caller)`
    answers over one transport, `fresh()` makes a throwaway account."""
    case, problems = probe.case, []
    label = f"{probe.field} as {who}"
    if case.throwaway:
        caller = await fresh()
    if not case.targets:
        answer = await ask(probe, variables(case, None), caller)
        return [f"{label} leaks {leak}: {answer}" for leak in world.leaks(answer, caller)]
    unknown = str(new_id())
    for target in case.targets:
        tried = world.ids[target]
        answer = await ask(probe, variables(case, tried), caller)
        problems += [f"{label} leaks {leak}: {answer}" for leak in world.leaks(answer, caller)]
        lenient = case.anyone_may or (case.stranger_reads and caller is world.sam)
        if lenient:
            continue
        nobodys = await ask(probe, variables(case, unknown), caller)
        if case.refusal not in codes(answer):
            problems.append(f"{label} with Ann's {target} is not refused with {case.refusal}: {answer}")
        if not same_as_nobody(answer, nobodys, tried, unknown):
            problems.append(f"{label}: Ann's {target} answers otherwise than an id of nobody's:\n"
                            f"  {answer}\n  {nobodys}")
    return problems


def _guarded(world: World, kind: str) -> list[Probe]:
    return [p for p in world.probes.values() if p.field not in PUBLIC and (p.kind == "subscription") ==
            (kind == "subscription")]


async def strangers_over_http(api: str, world: World) -> list[str]:
    async def ask(probe: Probe, values: dict[str, Any], caller: Account) -> Any:
        return await gql(api, probe.document, values, caller.access_token)

    async def fresh() -> Account:
        return await sign_up(api)

    problems = []
    for probe in _guarded(world, "operation"):
        for who, caller in _callers(world, probe.case).items():
            problems += await _stranger_problems(world, probe, caller, who, ask, fresh)
    return problems


async def strangers_over_a_websocket(api: str, world: World) -> list[str]:
    # Queries and mutations: graphql-transport-ws only (the legacy protocol runs subscriptions).
    async with open_socket(api, world.eve.access_token) as eve, open_socket(api, world.sam.access_token) as sam, \
            open_socket(api, world.dan.access_token) as dan:
        sockets = {world.eve.id: eve, world.sam.id: sam, world.dan.id: dan}

        async def ask(probe: Probe, values: dict[str, Any], caller: Account) -> Any:
            if caller.id in sockets:
                return await over_socket(sockets[caller.id], probe, values)
            async with open_socket(api, caller.access_token) as own:  # a throwaway account's
                return await over_socket(own, probe, values)

        async def fresh() -> Account:
            return await sign_up(api)

        problems = []
        for probe in _guarded(world, "operation"):
            for who, caller in _callers(world, probe.case).items():
                problems += await _stranger_problems(world, probe, caller, f"{who} over a WebSocket", ask, fresh)
    return problems


async def nobody_over_http(api: str, world: World) -> list[str]:
    problems = []
    for probe in _guarded(world, "operation"):
        values = variables(probe.case, world.ids[probe.case.targets[0]] if probe.case.targets else None)
        answer = await gql(api, probe.document, values)
        if "UNAUTHENTICATED" not in {e.get("extensions", {}).get("code") for e in answer.get("errors", [])}:
            problems.append(f"{probe.field} without a token is not UNAUTHENTICATED: {answer}")
        problems += [f"{probe.field} without a token leaks {leak}" for leak in world.leaks(answer, world.eve)]
    return problems


async def nobody_over_a_websocket(api: str, world: World) -> list[str]:
    problems = []
    for probe in world.probes.values():
        if probe.field in PUBLIC:
            continue
        values = variables(probe.case, world.ids[probe.case.targets[0]] if probe.case.targets else None)
        for protocol in (TRANSPORT_WS, LEGACY_WS):
            kind = "subscribe" if protocol == TRANSPORT_WS else "start"
            frames = []
            async with websockets.connect(ws_url(api), subprotocols=[websockets.Subprotocol(protocol)]) as ws:
                # The operation right behind a connection_init without a token: nothing may run.
                await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
                with suppress(websockets.ConnectionClosed):
                    await ws.send(json.dumps({"type": kind, "id": "1",
                                              "payload": {"query": probe.document, "variables": values}}))
                with suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(10):
                        async for raw in ws:
                            frames.append(json.loads(raw))
            ran = [f for f in frames if f.get("type") in ("next", "data")]
            # The socket's UNAUTHENTICATED: 4401 with the reason an HTTP answer carries in its extensions.
            if (ws.close_code, ws.close_reason) != (4401, "SIGN_IN_REQUIRED") or ran:
                problems.append(f"{probe.field} on {protocol} without a token: closed {ws.close_code}"
                                f" {ws.close_reason!r}, {ran}")
    return problems


async def subscriptions(api: str, world: World, protocol: str) -> list[str]:
    chat_events, my_events = world.probes["chatEvents"], world.probes["myEvents"]
    problems = []
    async with open_socket(api, world.eve.access_token, protocol) as eve, \
            open_socket(api, world.sam.access_token, protocol) as sam, \
            open_socket(api, world.dan.access_token, protocol) as dan, \
            open_socket(api, world.ann.access_token, protocol) as ann:
        unknown = str(new_id())
        others = (("Eve", eve), ("Sam", sam), ("Dan", dan))
        for who, socket in others:
            label = f"chatEvents on {protocol} as {who}"
            answer = await over_socket(socket, chat_events, {"id": world.ids["chat"]})
            nobodys = await over_socket(socket, chat_events, {"id": unknown})
            if "NOT_FOUND" not in codes(answer):
                problems.append(f"{label} with Ann's chat is not refused with NOT_FOUND: {answer}")
            if not same_as_nobody(answer, nobodys, world.ids["chat"], unknown):
                problems.append(f"{label}: Ann's chat answers otherwise than an id of nobody's:\n"
                                f"  {answer}\n  {nobodys}")
            problems += [f"{label} leaks {leak}: {answer}" for leak in world.leaks(answer, world.eve)]
        for _, socket in (*others, ("Ann", ann)):
            await socket.start("mine", my_events.document)
        await asyncio.sleep(0.3)  # the protocols acknowledge no subscription
        await gql(api, PROFILE, {"bio": f"events for ann only {protocol}"}, world.ann.access_token)
        # The control: Ann hears her own event, so the others would have by now.
        heard = await ann.result("mine")
        if heard["data"]["myEvents"]["__typename"] != "ProfileChanged":
            problems.append(f"Ann did not hear her own event on {protocol}: {heard}")
        await asyncio.sleep(0.5)
        for who, socket in others:
            with suppress(TimeoutError):
                frame = await socket.frame("mine", timeout=0.2)
                problems.append(f"{who} heard Ann's event on {protocol}: {frame}")
    return problems


async def controls(api: str, world: World) -> list[str]:
    """The comparisons above would pass on a server that answers everything alike: to Ann her own ids
    answer otherwise than unknown ones, and the leak check finds what it looks for."""
    problems = []
    unknown = str(new_id())
    for name, target in (("messages", "chat"), ("confirmPhotoUpload", "upload")):
        probe = world.probes[name]
        mine = await gql(api, probe.document, variables(probe.case, world.ids[target]), world.ann.access_token)
        nobodys = await gql(api, probe.document, variables(probe.case, unknown), world.ann.access_token)
        if same_as_nobody(mine, nobodys, world.ids[target], unknown) or "NOT_FOUND" not in codes(nobodys) \
                or "NOT_FOUND" in codes(mine):
            problems.append(f"{name}: Ann's own {target} answers like nobody's: {mine} / {nobodys}")
    me = await gql(api, world.probes["me"].document, {}, world.ann.access_token)
    if not set(world.leaks(me, world.eve)) >= {"ann", "email"}:
        problems.append(f"the leak check does not see Ann's id and email in her own me: {me}")
    # logIn is public: an unknown email must answer exactly what a wrong password does.
    document = 'mutation($e: String!) { logIn(email: $e, password: "not the password") {' \
               " __typename ... on Error { code message } ... on AuthError { field } } }"
    known = await gql(api, document, {"e": world.ann.email})
    nobody = await gql(api, document, {"e": f"nobody-{uuid.uuid4().hex[:8]}@example.test"})
    if known != nobody or known["data"]["logIn"]["__typename"] != "AuthError":
        problems.append(f"logIn tells whether an email has an account: {known} / {nobody}")
    return problems


async def anns_data_intact(api: str, world: World) -> list[str]:
    state = await gql(api, ANN_STATE % world.ids["chat"], {}, world.ann.access_token)
    if "errors" in state:
        return [f"Ann's state after the matrix: {state}"]
    expected = {"email": world.ann.email, "photo": True, "matches": [world.ids["chat"]],
                "messages": [world.markers["text"]]}
    found = {"email": state["data"]["me"]["email"],
             "photo": world.ids["photo"] in [p["id"] for p in state["data"]["me"]["photos"]],
             "matches": [e["node"]["id"] for e in state["data"]["matches"]["edges"]],
             "messages": [e["node"]["text"] for e in state["data"]["messages"]["edges"]]}
    return [] if found == expected else [f"what the others did changed Ann's data: {found} != {expected}"]


async def test_authorization_matrix(api: str, world: World) -> None:
    """Every section runs, whatever the one before found; the failure lists everything wrong."""
    sections: list[tuple[str, Any]] = [
        ("controls", lambda: controls(api, world)),
        ("strangers, the blocked and the unmatched over HTTP", lambda: strangers_over_http(api, world)),
        ("the same over a WebSocket", lambda: strangers_over_a_websocket(api, world)),
        ("nobody signed in over HTTP", lambda: nobody_over_http(api, world)),
        ("nobody signed in over a WebSocket", lambda: nobody_over_a_websocket(api, world)),
        *((f"subscriptions on {p}", lambda p=p: subscriptions(api, world, p)) for p in (TRANSPORT_WS, LEGACY_WS)),
        ("Ann's data afterwards", lambda: anns_data_intact(api, world)),
    ]
    unknown = unknown_fields(world.schema)
    report = ["== fields the matrix does not know:\n" + "\n".join(unknown)] if unknown else []
    for title, run in sections:
        problems = await run()
        if problems:
            report.append(f"== {title}:\n" + "\n".join(problems))
    assert not report, "\n".join(report)
