"""Every bad input gets a clear error with a stable code, never a 500, and changes nothing.

The requests here are deliberately hostile or sloppy; each test checks the status, that a code is
present, and where something could have been stored, that nothing was.
"""
import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from domain.model import Principal
from infra.security import JwtSigner
from infra.settings import Settings
from tests.e2e.conftest import Account, gql, running_server, sign_up, ws_url

JSON = "application/json"
SURROGATE = "\ud800"  # a lone high surrogate: valid in a JSON escape, not encodable as UTF-8
VALID_QUERY = b'{"query": "{ interestTags { slug } }"}'

ME = """{ me { id email displayName birthDate gender bio showMe visibility
  interestTags { slug } discovery { ageMin ageMax maxDistanceKm } } }"""
SIGN_UP = """mutation($i: SignUpInput!) { signUp(input: $i) {
  __typename ... on Error { code message } ... on InputError { field } ... on AuthError { field } } }"""
UPDATE = """mutation($i: ProfileInput!) { updateProfile(input: $i) {
  __typename ... on Error { code message } ... on InputError { field } } }"""
LOG_IN = """mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) {
  __typename ... on AuthPayload { me { id } } ... on Error { code } } }"""
REFRESH = """mutation($t: String!) { refreshToken(refreshToken: $t) {
  __typename ... on AuthPayload { refreshToken } ... on Error { code } } }"""

# The survivor's profile, set once at the start; every later failure must leave it exactly so.
SURVIVOR_PROFILE = {
    "bio": "Line one\nline two, with ünïcödé and an emoji 🙂", "interestTags": ["hiking", "Chess"],
    "showMe": ["WOMAN", "NONBINARY"], "ageMin": 25, "ageMax": 40, "maxDistanceKm": 30,
}
SUCCESS_TYPES = {"AuthPayload", "Me", "Done"}


def fresh_email() -> str:
    return f"bad-{uuid.uuid4().hex[:12]}@example.test"


def codes(body: dict[str, Any], field: str | None = None) -> list[str | None]:
    """Every error code in a response: each error's extensions.code, then the union member's code."""
    found: list[str | None] = [(e.get("extensions") or {}).get("code") for e in body.get("errors") or []]
    member = (body.get("data") or {}).get(field) if field else None
    if isinstance(member, dict) and "code" in member:
        found.append(member["code"])
    return found


def refusal_problem(body: dict[str, Any], field: str) -> str | None:
    """What is wrong with a refusal, if anything: it needs codes, all present, none a 500 in disguise."""
    found = codes(body, field)
    member = (body.get("data") or {}).get(field)
    if isinstance(member, dict) and member.get("__typename") in SUCCESS_TYPES:
        return f"accepted: {body}"
    if not found or not all(found):
        return f"no code: {body}"
    if "INTERNAL_SERVER_ERROR" in found:
        return f"internal error: {body}"
    return None


def assert_refused(body: dict[str, Any], field: str, context: object = "") -> list[str | None]:
    problem = refusal_problem(body, field)
    assert problem is None, (context, problem)
    return codes(body, field)


def error_code(response: httpx.Response) -> str:
    assert response.status_code != 500, response.text
    code: str = response.json()["errors"][0]["extensions"]["code"]
    assert code, response.text
    return code


async def post_raw(
    base: str, body: bytes | AsyncIterator[bytes], *, method: str = "POST", content_type: str | None = JSON,
    token: str | None = None, accept: str | None = None,
) -> httpx.Response:
    """A request whose bytes we chose, so escapes and framing reach the server untouched."""
    headers = {"content-type": content_type} if content_type else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if accept:
        headers["accept"] = accept
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(method, f"{base}/graphql", content=body, headers=headers)


async def read_me(base: str, token: str) -> dict[str, Any]:
    me: dict[str, Any] = (await gql(base, ME, token=token))["data"]["me"]
    return me


async def assert_not_registered(base: str, email: str, password: str) -> None:
    result = (await gql(base, LOG_IN, {"e": email, "p": password}))["data"]["logIn"]
    assert result == {"__typename": "AuthError", "code": "INVALID_CREDENTIALS"}, (email, result)


async def assert_healthy(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{base}/readyz")).status_code == 200
    assert (await gql(base, "{ interestTags { slug } }"))["data"]["interestTags"]


@pytest.fixture(scope="module")
async def survivor(api: str) -> Account:
    """An account made before the barrage; the last test checks that nothing of it was lost."""
    account = await sign_up(api, displayName="Sur Vivor", birthDate="1990-05-06", gender="NONBINARY")
    result = (await gql(api, UPDATE, {"i": SURVIVOR_PROFILE}, account.access_token))["data"]["updateProfile"]
    assert result["__typename"] == "Me", result
    return account


# --- HTTP transport ------------------------------------------------------------------------------

def _nested_variables(depth: int) -> bytes:
    # Well-formed JSON, shallow enough for json.loads, deep enough to hurt a recursive walker.
    return (b'{"query": "mutation($i: ProfileInput!) { updateProfile(input: $i) { __typename } }", '
            b'"variables": {"i": {"interestTags": ' + b"[" * depth + b"]" * depth + b"}}}")


@pytest.mark.parametrize(("method", "content_type", "body", "status", "code"), [
    pytest.param("POST", JSON, b'{"query": "{ interestTags', 400, "BAD_REQUEST", id="malformed-json"),
    pytest.param("POST", JSON, b'{"query": "{ __typename }",}', 400, "BAD_REQUEST", id="trailing-comma"),
    pytest.param("POST", JSON, b'{"query": "\xff\xfe"}', 400, "BAD_REQUEST", id="invalid-utf8"),
    pytest.param("POST", JSON, b"", 400, "BAD_REQUEST", id="empty-body"),
    pytest.param("POST", "text/plain", VALID_QUERY, 415, "UNSUPPORTED_MEDIA_TYPE", id="text-plain"),
    pytest.param("POST", "application/x-www-form-urlencoded", b"query=%7B__typename%7D", 415,
                 "UNSUPPORTED_MEDIA_TYPE", id="form-urlencoded"),
    pytest.param("POST", "multipart/form-data; boundary=x", VALID_QUERY, 415, "UNSUPPORTED_MEDIA_TYPE",
                 id="multipart"),
    pytest.param("POST", "application/graphql", b"{ __typename }", 415, "UNSUPPORTED_MEDIA_TYPE",
                 id="application-graphql"),
    pytest.param("POST", None, VALID_QUERY, 415, "UNSUPPORTED_MEDIA_TYPE", id="no-content-type"),
    pytest.param("PUT", JSON, VALID_QUERY, 405, "METHOD_NOT_ALLOWED", id="put"),
    pytest.param("DELETE", JSON, b"", 405, "METHOD_NOT_ALLOWED", id="delete"),
    pytest.param("PATCH", JSON, VALID_QUERY, 405, "METHOD_NOT_ALLOWED", id="patch"),
    pytest.param("POST", JSON, b"[]", 400, "BAD_REQUEST", id="json-array"),
    pytest.param("POST", JSON, b'"x"', 400, "BAD_REQUEST", id="json-string"),
    pytest.param("POST", JSON, b"1", 400, "BAD_REQUEST", id="json-number"),
    pytest.param("POST", JSON, b"null", 400, "BAD_REQUEST", id="json-null"),
    pytest.param("POST", JSON, b"true", 400, "BAD_REQUEST", id="json-true"),
    pytest.param("POST", JSON, b"{}", 400, "BAD_REQUEST", id="no-query"),
    pytest.param("POST", JSON, b'{"query": 1}', 400, "BAD_REQUEST", id="query-number"),
    pytest.param("POST", JSON, b'{"query": ["{ __typename }"]}', 400, "BAD_REQUEST", id="query-list"),
    pytest.param("POST", JSON, b'{"query": {"q": "{ __typename }"}}', 400, "BAD_REQUEST", id="query-object"),
    pytest.param("POST", JSON, b'{"query": "{ __typename }", "variables": []}', 400, "BAD_REQUEST",
                 id="variables-list"),
    pytest.param("POST", JSON, b'{"query": "{ __typename }", "variables": "x"}', 400, "BAD_REQUEST",
                 id="variables-string"),
    pytest.param("POST", JSON, b'{"query": "{ __typename }", "variables": 1}', 400, "BAD_REQUEST",
                 id="variables-number"),
    pytest.param("POST", JSON, b"[" * 100_000, 400, "BAD_REQUEST", id="deep-array-100k"),
    # A batch's items are held to what a single request is.
    pytest.param("POST", JSON, b'[{"query": "{ __typename }"}, 5]', 400, "BAD_REQUEST", id="batch-number-item"),
    pytest.param("POST", JSON, b"[null]", 400, "BAD_REQUEST", id="batch-null-item"),
    pytest.param("POST", JSON, b'[[{"query": "{ __typename }"}]]', 400, "BAD_REQUEST", id="batch-nested"),
    pytest.param("POST", JSON, b'[{"query": 5}]', 400, "BAD_REQUEST", id="batch-query-number"),
    pytest.param("POST", JSON, b'[{"query": "{ __typename }", "variables": [1]}]', 400, "BAD_REQUEST",
                 id="batch-variables-list"),
    pytest.param("POST", JSON, b'[{"query": "{ __typename }", "extensions": "x"}]', 400, "BAD_REQUEST",
                 id="batch-extensions-string"),
    pytest.param("POST", JSON, b'{"query": "{ __typename }", "operationName": 5}', 400, "BAD_REQUEST",
                 id="operation-name-number"),
    # Whether it is refused at the edge or by variable coercion is the server's choice; a 500 is not.
    pytest.param("POST", JSON, _nested_variables(400), None, None, id="deep-array-in-variables"),
])
async def test_bad_http_requests_get_a_code(
    api: str, method: str, content_type: str | None, body: bytes, status: int | None, code: str | None,
) -> None:
    response = await post_raw(api, body, method=method, content_type=content_type)
    got = error_code(response)
    if status is not None:
        assert response.status_code == status, response.text
    if code is not None:
        assert got == code, response.text
    assert response.headers["content-type"].startswith(JSON)


async def test_graphql_response_media_type_on_edge_errors(api: str) -> None:
    response = await post_raw(api, b"{", accept="application/graphql-response+json")
    assert response.status_code == 400 and error_code(response) == "BAD_REQUEST"
    assert response.headers["content-type"].startswith("application/graphql-response+json")


async def test_body_over_one_megabyte_with_content_length(api: str) -> None:
    body = b'{"query": "{ __typename }", "variables": {"pad": "' + b"x" * 1_100_000 + b'"}}'
    response = await post_raw(api, body)
    assert response.request.headers["content-length"] == str(len(body))
    assert response.status_code == 413 and error_code(response) == "PAYLOAD_TOO_LARGE"
    await assert_healthy(api)


async def test_body_over_one_megabyte_chunked(api: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # Just over the limit: the refusal comes as the last chunk arrives, so the client is not
        # still writing a megabyte into a connection the server has already answered.
        for _ in range(10):
            yield b"x" * 100_000
        yield b"x" * 1_000

    response = await post_raw(api, chunks())
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413 and error_code(response) == "PAYLOAD_TOO_LARGE"
    await assert_healthy(api)


@pytest.fixture
def impatient_api(settings: Settings, migrated: None, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A server that waits 2 s for a request body, with its log."""
    with running_server(settings, tmp_path, BODY_TIMEOUT_SECONDS="2") as base:
        yield base, next(tmp_path.glob("api-*.log"))


async def _send_part_of_a_body(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 1000\r\n\r\n{\"query\": \"{ __type")
    await writer.drain()
    return reader, writer


async def test_a_body_that_trickles_in_is_refused_in_time_and_a_vanished_client_leaves_no_trace(
    impatient_api: tuple[str, Path],
) -> None:
    base, log = impatient_api
    reader, writer = await _send_part_of_a_body(base)
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 10)  # the server closes after answering
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), answer
    assert json.loads(body)["errors"][0]["extensions"]["code"] == "REQUEST_TIMEOUT"
    assert 1.5 < time.monotonic() - started < 6

    # A client gone halfway through its body: nothing to answer, nothing to log.
    _, writer = await _send_part_of_a_body(base)
    writer.close()
    await asyncio.sleep(0.5)
    await assert_healthy(base)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


async def test_get_refuses_mutations_without_running_them(api: str, survivor: Account) -> None:
    email = fresh_email()
    sign_up_doc = ('mutation { signUp(input: {email: ' + json.dumps(email) + ', password: "a long enough password", '
                   'displayName: "Via Get", birthDate: "1990-01-01", gender: MAN}) { __typename } }')
    attempts = [
        ({"query": sign_up_doc}, None),
        # A mutation hidden behind a query in the same document, picked by operationName.
        ({"query": "query Q { __typename } mutation M { logOutEverywhere }", "operationName": "M"},
         survivor.access_token),
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        for params, token in attempts:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            response = await client.get(f"{api}/graphql", params=params, headers=headers)
            assert response.status_code == 405, response.text  # GraphQL over HTTP: the method is wrong
            assert error_code(response) == "METHOD_NOT_ALLOWED", response.text
            assert "data" not in response.json() or response.json()["data"] is None
    await assert_not_registered(api, email, "a long enough password")
    assert (await read_me(api, survivor.access_token))["id"] == survivor.id  # logOutEverywhere did not run


# --- signUp --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "expected", "field"), [
    pytest.param({"email": "plainaddress"}, {"INVALID_EMAIL"}, "email", id="email-no-at"),
    pytest.param({"email": ""}, {"INVALID_EMAIL"}, "email", id="email-empty"),
    pytest.param({"email": "@example.test"}, {"INVALID_EMAIL"}, "email", id="email-no-local-part"),
    pytest.param({"email": "user@"}, {"INVALID_EMAIL"}, "email", id="email-no-domain"),
    pytest.param({"email": "user@localhost"}, {"INVALID_EMAIL"}, "email", id="email-no-dot"),
    pytest.param({"email": "a@@example.test"}, {"INVALID_EMAIL"}, "email", id="email-two-ats"),
    pytest.param({"email": "a b@example.test"}, {"INVALID_EMAIL"}, "email", id="email-space"),
    pytest.param({"email": "a@example..test"}, {"INVALID_EMAIL"}, "email", id="email-double-dot"),
    pytest.param({"email": "x" * 65 + "@example.test"}, {"INVALID_EMAIL"}, "email", id="email-long-local"),
    pytest.param({"email": "a@" + "b" * 300 + ".test"}, {"INVALID_EMAIL", "TEXT_TOO_LONG"}, "email",
                 id="email-over-254"),
    pytest.param({"email": "a\x00b@example.test"}, {"INVALID_EMAIL", "INVALID_TEXT"}, "email", id="email-nul"),
    pytest.param({"password": "short"}, {"PASSWORD_TOO_SHORT"}, "password", id="password-5"),
    pytest.param({"password": "x" * 7}, {"PASSWORD_TOO_SHORT"}, "password", id="password-7"),
    pytest.param({"password": "x" * 129}, {"PASSWORD_TOO_LONG"}, "password", id="password-129"),
    pytest.param({"displayName": ""}, {"TEXT_TOO_SHORT"}, "displayName", id="name-empty"),
    pytest.param({"displayName": "   "}, {"TEXT_TOO_SHORT"}, "displayName", id="name-blank"),
    pytest.param({"displayName": "x" * 51}, {"TEXT_TOO_LONG"}, "displayName", id="name-51"),
    pytest.param({"displayName": "Ann\x00Lee"}, {"INVALID_TEXT"}, "displayName", id="name-nul"),
    pytest.param({"displayName": "Ann\x07Lee"}, {"INVALID_TEXT"}, "displayName", id="name-bell"),
    pytest.param({"displayName": "\x1b[31mRed"}, {"INVALID_TEXT"}, "displayName", id="name-ansi-escape"),
    pytest.param({"displayName": "Ann\nLee"}, {"INVALID_TEXT"}, "displayName", id="name-newline"),
    pytest.param({"displayName": "Ann\u202eeeL"}, {"INVALID_TEXT"}, "displayName", id="name-bidi-override"),
    pytest.param({"displayName": "Ann\u2066Lee"}, {"INVALID_TEXT"}, "displayName", id="name-bidi-isolate"),
    pytest.param({"displayName": "\u200b"}, {"TEXT_TOO_SHORT"}, "displayName", id="name-zero-width-only"),
    pytest.param({"email": "zw\u200b@example.test"}, {"INVALID_EMAIL"}, "email", id="email-zero-width"),
    pytest.param({"birthDate": "2001-02-30"}, {"BAD_USER_INPUT"}, None, id="date-feb-30"),
    pytest.param({"birthDate": "yesterday"}, {"BAD_USER_INPUT"}, None, id="date-word"),
    pytest.param({"birthDate": ""}, {"BAD_USER_INPUT"}, None, id="date-empty"),
    pytest.param({"birthDate": "1850-01-01"}, {"INVALID_BIRTH_DATE"}, "birthDate", id="date-over-120"),
    pytest.param({"gender": "ALIEN"}, {"BAD_USER_INPUT"}, None, id="gender-unknown"),
    pytest.param({"gender": "woman"}, {"BAD_USER_INPUT"}, None, id="gender-lowercase"),
    pytest.param({"gender": ""}, {"BAD_USER_INPUT"}, None, id="gender-empty"),
])
async def test_sign_up_refuses_bad_input(
    api: str, overrides: dict[str, str], expected: set[str], field: str | None,
) -> None:
    data = {"email": fresh_email(), "password": "a long enough password", "displayName": "Valid Name",
            "birthDate": "1990-01-01", "gender": "WOMAN", **overrides}
    body = await gql(api, SIGN_UP, {"i": data})
    found = assert_refused(body, "signUp", overrides)
    assert set(found) <= expected, body
    if field is not None:
        assert body["data"]["signUp"]["field"] == field, body
    await assert_not_registered(api, data["email"], data["password"])


def years_ago(today: date, years: int) -> date:
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February in a year that has none
        return today.replace(year=today.year - years, day=28)


async def test_sign_up_birth_date_limits(api: str) -> None:
    today = datetime.now(UTC).date()  # the server judges age by its UTC clock
    under_age = years_ago(today, 18) + timedelta(days=1)  # 17 years and 364 days old
    for birth, code in ((under_age, "UNDER_AGE"), (today + timedelta(days=1), "INVALID_BIRTH_DATE"),
                        (today + timedelta(days=3650), "INVALID_BIRTH_DATE"), (today, "UNDER_AGE")):
        email = fresh_email()
        body = await gql(api, SIGN_UP, {"i": {"email": email, "password": "a long enough password",
                                              "displayName": "Young", "birthDate": birth.isoformat(),
                                              "gender": "MAN"}})
        assert assert_refused(body, "signUp", birth) == [code], (birth, body)
        assert body["data"]["signUp"]["field"] == "birthDate"
        await assert_not_registered(api, email, "a long enough password")
    # The limits are the documented ones, not stricter: exactly 18 today is welcome.
    adult = await sign_up(api, birthDate=years_ago(today, 18).isoformat())
    assert (await read_me(api, adult.access_token))["birthDate"] == years_ago(today, 18).isoformat()


async def test_sign_up_accepts_the_boundaries(api: str) -> None:
    for overrides in ({"password": "x" * 8}, {"password": "y" * 128}, {"displayName": "z" * 50},
                      {"displayName": "Zoë 🙂 李"}):
        account = await sign_up(api, **overrides)
        me = await read_me(api, account.access_token)
        assert me["displayName"] == overrides.get("displayName", "Test Person")


# --- updateProfile -------------------------------------------------------------------------------

ELEVEN_TAGS = ["hiking", "chess", "tea", "wine", "yoga", "gym", "jazz", "rock", "piano", "guitar", "coffee"]


@pytest.mark.parametrize(("changes", "expected", "field"), [
    pytest.param({"interestTags": ["no-such-tag"]}, {"UNKNOWN_TAG"}, "interestTags", id="unknown-tag"),
    pytest.param({"interestTags": ELEVEN_TAGS}, {"TOO_MANY_TAGS"}, "interestTags", id="eleven-tags"),
    pytest.param({"interestTags": ["hiking"] * 30}, {"TOO_MANY_TAGS"}, "interestTags", id="thirty-repeats"),
    pytest.param({"interestTags": [""]}, {"UNKNOWN_TAG"}, "interestTags", id="empty-tag"),
    pytest.param({"bio": "x" * 10_000}, {"TEXT_TOO_LONG"}, "bio", id="bio-10000"),
    pytest.param({"bio": "x" * 501}, {"TEXT_TOO_LONG"}, "bio", id="bio-501"),
    pytest.param({"bio": "hi\u202ethere"}, {"INVALID_TEXT"}, "bio", id="bio-bidi-override"),
    pytest.param({"displayName": ""}, {"TEXT_TOO_SHORT"}, "displayName", id="name-empty"),
    pytest.param({"displayName": "x" * 51}, {"TEXT_TOO_LONG"}, "displayName", id="name-51"),
    pytest.param({"ageMin": 40, "ageMax": 30}, {"INVALID_AGE_RANGE"}, None, id="age-min-over-max"),
    pytest.param({"ageMin": 17}, {"INVALID_AGE_RANGE"}, "ageMin", id="age-min-17"),
    pytest.param({"ageMax": 100}, {"INVALID_AGE_RANGE"}, "ageMax", id="age-max-100"),
    pytest.param({"ageMin": 50}, {"INVALID_AGE_RANGE"}, "ageMin", id="age-min-over-stored-max"),
    pytest.param({"ageMin": 2**31}, {"BAD_USER_INPUT"}, None, id="age-min-not-int32"),
    pytest.param({"maxDistanceKm": 0}, {"INVALID_DISTANCE"}, "maxDistanceKm", id="distance-0"),
    pytest.param({"maxDistanceKm": -1}, {"INVALID_DISTANCE"}, "maxDistanceKm", id="distance-negative"),
    pytest.param({"maxDistanceKm": 501}, {"INVALID_DISTANCE"}, "maxDistanceKm", id="distance-501"),
    pytest.param({"maxDistanceKm": 100_000}, {"INVALID_DISTANCE"}, "maxDistanceKm", id="distance-100000"),
    pytest.param({"showMe": []}, {"INVALID_INPUT"}, "showMe", id="show-me-empty"),
    pytest.param({"showMe": ["ALIEN"]}, {"BAD_USER_INPUT"}, None, id="show-me-unknown"),
    pytest.param({"visibility": "SECRET"}, {"BAD_USER_INPUT"}, None, id="visibility-unknown"),
    pytest.param({"nickname": "x"}, {"BAD_USER_INPUT"}, None, id="unknown-field"),
    # One bad field spoils the whole update: the good fields next to it must not be saved either.
    pytest.param({"displayName": "Changed", "bio": "changed", "interestTags": ["hiking", "no-such-tag"]},
                 {"UNKNOWN_TAG"}, "interestTags", id="good-fields-with-bad-tag"),
    pytest.param({"displayName": "Changed", "maxDistanceKm": 10, "ageMin": 17}, {"INVALID_AGE_RANGE"},
                 "ageMin", id="good-fields-with-bad-age"),
])
async def test_update_profile_refuses_bad_input_and_changes_nothing(
    api: str, survivor: Account, changes: dict[str, Any], expected: set[str], field: str | None,
) -> None:
    before = await read_me(api, survivor.access_token)
    body = await gql(api, UPDATE, {"i": changes}, survivor.access_token)
    found = assert_refused(body, "updateProfile", changes)
    assert set(found) <= expected, body
    if field is not None:
        assert body["data"]["updateProfile"]["field"] == field, body
    assert await read_me(api, survivor.access_token) == before


async def test_update_profile_accepts_the_boundaries(api: str) -> None:
    account = await sign_up(api)
    changes = {"bio": "b" * 500, "interestTags": ELEVEN_TAGS[:10], "ageMin": 18, "ageMax": 99,
               "maxDistanceKm": 500, "displayName": "d" * 50}
    result = (await gql(api, UPDATE, {"i": changes}, account.access_token))["data"]["updateProfile"]
    assert result["__typename"] == "Me", result
    result = (await gql(api, UPDATE, {"i": {"maxDistanceKm": 1, "ageMin": 99}}, account.access_token))
    assert result["data"]["updateProfile"]["__typename"] == "Me", result
    me = await read_me(api, account.access_token)
    assert me["discovery"] == {"ageMin": 99, "ageMax": 99, "maxDistanceKm": 1}
    assert len(me["interestTags"]) == 10 and len(me["bio"]) == 500
    # Text typed on Windows: CRLF line ends are line ends, kept as LF.
    result = await gql(api, UPDATE, {"i": {"bio": "line one\r\nline two"}}, account.access_token)
    assert result["data"]["updateProfile"]["__typename"] == "Me", result
    assert (await read_me(api, account.access_token))["bio"] == "line one\nline two"


# --- lone UTF-16 surrogates ----------------------------------------------------------------------

@dataclass(frozen=True)
class SurrogateCase:
    """One string argument carrying a lone surrogate; `@V@` marks where the value goes."""

    name: str
    field: str  # the root field whose result is checked
    operation: str  # "query" or "mutation"
    var_type: str
    selection: str
    value: str | list[str]
    signs_up: str | None = None  # the email an accidental success would have registered

    def variable_document(self) -> str:
        return f"{self.operation}($v: {self.var_type}) {{ {self.selection.replace('@V@', '$v')} }}"

    def literal_document(self) -> str:
        # A JSON string is a valid GraphQL string literal, and json.dumps keeps "\ud800" as an escape.
        if isinstance(self.value, list):
            literal = "[" + ", ".join(json.dumps(item) for item in self.value) + "]"
        else:
            literal = json.dumps(self.value)
        assert "\\ud800" in literal
        return f"{self.operation} {{ {self.selection.replace('@V@', literal)} }}"


AUTH_RESULT = "{ __typename ... on Error { code } }"


def surrogate_cases(survivor: Account, run: str) -> list[SurrogateCase]:
    """Every string argument of every operation; `run` keeps sign-up emails unique per transport."""
    cases: list[SurrogateCase] = []

    def sign_up_case(name: str, value: str, var_type: str = "String!", **fields: str) -> None:
        email = fields.get("email", f"surrogate-{run}-{name}@example.test")
        given = {"email": json.dumps(email), "password": '"a long enough password"',
                 "displayName": '"Valid Name"', "birthDate": '"1990-01-01"', "gender": "WOMAN", name: "@V@"}
        args = ", ".join(f"{key}: {val}" for key, val in given.items())
        cases.append(SurrogateCase(f"signUp.{name}", "signUp", "mutation", var_type,
                                   f"signUp(input: {{{args}}}) {AUTH_RESULT}", value, signs_up=email))

    sign_up_case("email", f"surrogate-{run}{SURROGATE}@example.test",
                 email=f"surrogate-{run}@example.test")
    sign_up_case("password", f"a long enough password{SURROGATE}")
    sign_up_case("displayName", f"Valid{SURROGATE}Name")
    sign_up_case("birthDate", f"1990-01-0{SURROGATE}", "Date!")
    sign_up_case("gender", f"WOMAN{SURROGATE}", "Gender!")
    cases += [
        SurrogateCase("logIn.email", "logIn", "mutation", "String!",
                      f'logIn(email: @V@, password: {json.dumps(survivor.password)}) {AUTH_RESULT}',
                      survivor.email + SURROGATE),
        SurrogateCase("logIn.password", "logIn", "mutation", "String!",
                      f"logIn(email: {json.dumps(survivor.email)}, password: @V@) {AUTH_RESULT}",
                      survivor.password + SURROGATE),
        # The real token with one more character: well formed enough to reach the hashing step.
        SurrogateCase("refreshToken.refreshToken", "refreshToken", "mutation", "String!",
                      f"refreshToken(refreshToken: @V@) {AUTH_RESULT}", survivor.refresh_token + SURROGATE),
        SurrogateCase("deleteAccount.password", "deleteAccount", "mutation", "String!",
                      f"deleteAccount(password: @V@) {AUTH_RESULT}", survivor.password + SURROGATE),
        SurrogateCase("updateProfile.displayName", "updateProfile", "mutation", "String!",
                      f"updateProfile(input: {{displayName: @V@}}) {AUTH_RESULT}", f"Sur{SURROGATE}Vivor"),
        SurrogateCase("updateProfile.bio", "updateProfile", "mutation", "String!",
                      f"updateProfile(input: {{bio: @V@}}) {AUTH_RESULT}", f"bio {SURROGATE} text"),
        SurrogateCase("updateProfile.interestTags", "updateProfile", "mutation", "[String!]!",
                      f"updateProfile(input: {{interestTags: @V@}}) {AUTH_RESULT}", ["hiking", SURROGATE]),
        # Same length as a UUID, so it reaches the id parser.
        SurrogateCase("person.id", "person", "query", "ID!", "person(id: @V@) { id displayName }",
                      survivor.id[:-1] + SURROGATE),
    ]
    return cases


async def check_nothing_stored(base: str, survivor: Account, before: dict[str, Any],
                               cases: list[SurrogateCase]) -> None:
    await assert_healthy(base)
    assert await read_me(base, survivor.access_token) == before
    for case in cases:
        if case.signs_up:
            await assert_not_registered(base, case.signs_up, "a long enough password")


async def test_surrogates_as_json_variables(api: str, survivor: Account) -> None:
    before = await read_me(api, survivor.access_token)
    cases = surrogate_cases(survivor, "var")
    problems: list[str] = []
    for case in cases:
        # Our own bytes: an ASCII body whose only trace of the surrogate is the \ud800 escape.
        body = json.dumps({"query": case.variable_document(), "variables": {"v": case.value}}).encode("ascii")
        assert b"\\ud800" in body
        response = await post_raw(api, body, token=survivor.access_token)
        problem = "HTTP 500" if response.status_code == 500 else refusal_problem(response.json(), case.field)
        if problem:
            problems.append(f"{case.name}: {problem}")
    await check_nothing_stored(api, survivor, before, cases)
    assert not problems, "\n".join(problems)


async def test_surrogates_as_graphql_string_escapes(api: str, survivor: Account) -> None:
    before = await read_me(api, survivor.access_token)
    cases = surrogate_cases(survivor, "lit")
    problems: list[str] = []
    for case in cases:
        # The JSON body itself is clean ASCII; the surrogate only appears once GraphQL parses "\ud800".
        body = json.dumps({"query": case.literal_document()}).encode("ascii")
        assert b"\\\\ud800" in body
        response = await post_raw(api, body, token=survivor.access_token)
        problem = "HTTP 500" if response.status_code == 500 else refusal_problem(response.json(), case.field)
        if problem:
            problems.append(f"{case.name}: {problem}")
    await check_nothing_stored(api, survivor, before, cases)
    assert not problems, "\n".join(problems)


async def test_surrogates_over_websocket(api: str, survivor: Account) -> None:
    before = await read_me(api, survivor.access_token)
    cases = surrogate_cases(survivor, "ws")
    transport = WebsocketsTransport(
        url=ws_url(api), subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        init_payload={"Authorization": f"Bearer {survivor.access_token}"}, close_timeout=2,
    )
    await transport.connect()
    problems: list[str] = []
    try:
        for case in cases:
            # gql sends json.dumps output, which keeps the surrogate as a \ud800 escape.
            request = GraphQLRequest(case.variable_document(), variable_values={"v": case.value})
            try:
                result = await transport.execute(request)
                body: dict[str, Any] = {"data": result.data, "errors": result.errors}
            except TransportQueryError as exc:  # refused before execution ("error" message)
                body = {"data": None, "errors": exc.errors}
            problem = refusal_problem(body, case.field)
            # A validation failure would mean the document, not the value, was refused.
            if problem is None and "GRAPHQL_VALIDATION_FAILED" in codes(body, case.field):
                problem = f"document invalid: {body}"
            if problem:
                problems.append(f"{case.name}: {problem}")
        # The socket outlived the barrage and still answers as the same user.
        me = await transport.execute(GraphQLRequest("{ me { id } }"))
        assert me.data == {"me": {"id": survivor.id}}
    finally:
        await transport.close()
    await check_nothing_stored(api, survivor, before, cases)
    assert not problems, "\n".join(problems)


# --- tokens --------------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def bad_tokens(account: Account, other: Account, settings: Settings) -> list[tuple[str, str | None, str]]:
    """(name, token, expected reason) for every way a bearer token can be wrong."""
    claims = _claims(account.access_token)
    principal = Principal(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]),
                          datetime.fromtimestamp(claims["sxp"], UTC))
    # A real session, only the token's own lifetime is over.
    expired, _ = JwtSigner(settings.secret_key, 60).issue(principal, datetime.now(UTC) - timedelta(hours=1))
    header, payload, signature = account.access_token.split(".")
    flipped = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    # Someone else's user id under this token's signature.
    swapped = _b64(json.dumps({**claims, "sub": other.id}).encode())
    unsigned = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + payload + "."
    forged, _ = JwtSigner("another secret of the same sort and length", 60).issue(principal, datetime.now(UTC))
    return [
        ("missing", None, "SIGN_IN_REQUIRED"),
        ("expired", expired, "TOKEN_EXPIRED"),
        ("signature-flipped", flipped, "TOKEN_INVALID"),
        ("payload-swapped", f"{header}.{swapped}.{signature}", "TOKEN_INVALID"),
        ("alg-none", unsigned, "TOKEN_INVALID"),
        ("forged", forged, "TOKEN_INVALID"),
        ("garbage", "garbage", "TOKEN_INVALID"),
        ("truncated", account.access_token[:-10], "TOKEN_INVALID"),
    ]


async def test_missing_expired_and_tampered_tokens(api: str, survivor: Account, settings: Settings) -> None:
    other = await sign_up(api)
    before = await read_me(api, survivor.access_token)
    for name, token, reason in bad_tokens(survivor, other, settings):
        for document, variables in ((ME, None), (UPDATE, {"i": {"displayName": "Hijacked"}})):
            body = await gql(api, document, variables, token)
            assert body["data"] is None, (name, body)
            error = body["errors"][0]
            assert error["extensions"]["code"] == "UNAUTHENTICATED", (name, body)
            assert error["extensions"]["reason"] == reason, (name, body)
    assert await read_me(api, survivor.access_token) == before
    assert (await read_me(api, other.access_token))["displayName"] == "Test Person"


async def test_token_of_an_ended_session(api: str) -> None:
    account = await sign_up(api)
    assert (await gql(api, "mutation { logOut }", token=account.access_token))["data"]["logOut"] is True
    for document, variables in ((ME, None), (UPDATE, {"i": {"bio": "after logout"}})):
        extensions = (await gql(api, document, variables, account.access_token))["errors"][0]["extensions"]
        assert (extensions["code"], extensions["reason"]) == ("UNAUTHENTICATED", "SESSION_ENDED")


# --- after the barrage ---------------------------------------------------------------------------

async def test_survivor_is_intact_after_the_barrage(api_servers: list[str], survivor: Account) -> None:
    for base in api_servers:  # both processes agree on what was stored
        logged = (await gql(base, LOG_IN, {"e": survivor.email, "p": survivor.password}))["data"]["logIn"]
        assert logged == {"__typename": "AuthPayload", "me": {"id": survivor.id}}
        me = await read_me(base, survivor.access_token)
        assert me["id"] == survivor.id and me["email"] == survivor.email
        assert (me["displayName"], me["birthDate"], me["gender"]) == ("Sur Vivor", "1990-05-06", "NONBINARY")
        assert me["bio"] == SURVIVOR_PROFILE["bio"]
        assert [t["slug"] for t in me["interestTags"]] == ["hiking", "chess"]
        assert me["showMe"] == ["NONBINARY", "WOMAN"] and me["visibility"] == "VISIBLE"
        assert me["discovery"] == {"ageMin": 25, "ageMax": 40, "maxDistanceKm": 30}
    # The refresh token outlived every malformed copy of itself.
    refreshed = (await gql(api_servers[0], REFRESH, {"t": survivor.refresh_token}))["data"]["refreshToken"]
    assert refreshed["__typename"] == "AuthPayload", refreshed


async def test_subscriptions_over_http_and_unnamed_operations_are_refused(api: str, survivor: Account) -> None:
    cases = [
        {"query": "subscription { myEvents { __typename } }"},
        {"query": "query A { __typename } query B { interestTags { slug } }"},
    ]
    headers = {"authorization": f"Bearer {survivor.access_token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for body in cases:
            for response in (await client.post(f"{api}/graphql", json=body, headers=headers),
                             await client.get(f"{api}/graphql", params=body, headers=headers)):
                payload = response.json()
                assert response.status_code == 200 and payload.get("data") is None, response.text
                assert [e["extensions"]["code"] for e in payload["errors"]] == ["BAD_REQUEST"], response.text
        # Naming the operation picks it, as the spec says.
        chosen = await client.post(f"{api}/graphql", json={**cases[1], "operationName": "B"}, headers=headers)
        assert chosen.json()["data"]["interestTags"]


async def test_expensive_documents_are_refused_before_running(api: str) -> None:
    # 20,000 aliases of a list field once held an API process for 20 s and answered 110 MB.
    aliases = "{" + " ".join(f"a{i}: interestTags {{ slug label category }}" for i in range(20_000)) + "}"
    deep = "{ me { " + "interestTags { " * 12 + "slug" + " }" * 12 + " } }"
    cases = [(aliases, "GRAPHQL_PARSE_FAILED"),  # over the token limit before it is even parsed
             ("{" + " ".join(f"a{i}: interestTags {{ slug }}" for i in range(60)) + "}", "GRAPHQL_VALIDATION_FAILED"),
             (deep, "GRAPHQL_VALIDATION_FAILED")]
    async with httpx.AsyncClient(timeout=30) as client:
        for query, code in cases:
            started = time.monotonic()
            response = await client.post(f"{api}/graphql", json={"query": query})
            assert time.monotonic() - started < 2, "refused only after running"
            body = response.json()
            assert body.get("data") is None and [e["extensions"]["code"] for e in body["errors"]][:1] == [code], \
                response.text[:300]


async def test_batches_are_bounded(api: str) -> None:
    one = {"query": "{ interestTags { slug } }"}
    async with httpx.AsyncClient(timeout=30) as client:
        answered = await client.post(f"{api}/graphql", json=[one, {"query": "{ __typename }"}])
        assert answered.status_code == 200, answered.text
        first, second = answered.json()
        assert first["data"]["interestTags"] and second["data"] == {"__typename": "Query"}
        for batch in ([], [one] * 11):
            refused = await client.post(f"{api}/graphql", json=batch)
            assert refused.status_code == 400
            assert refused.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST", refused.text
        # A batch with a costly member is refused member by member, before it runs.
        page = "matches(first: 100) { edges { node { person { interestTags { slug label category } } } } }"
        costly = {"query": "{" + " ".join(f"a{i}: {page}" for i in range(12)) + "}"}
        answered = await client.post(f"{api}/graphql", json=[one, costly])
        good, bad = answered.json()
        assert good["data"]["interestTags"] and bad["data"] is None
        assert bad["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
