import uuid
from datetime import UTC, datetime, timedelta

from domain.model import Principal
from infra.security import JwtSigner
from infra.settings import Settings
from tests.e2e.conftest import gql, sign_up

LOG_IN = """mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) {
  __typename ... on AuthPayload { accessToken refreshToken me { id } } ... on Error { code } } }"""
REFRESH = """mutation($t: String!) { refreshToken(refreshToken: $t) {
  __typename ... on AuthPayload { accessToken refreshToken } ... on Error { code } } }"""
ME = "{ me { id email displayName age } }"


def error_code(body: dict) -> str:
    return body["errors"][0]["extensions"]["code"]


async def test_sign_up_log_in_and_read_me(api: str) -> None:
    account = await sign_up(api, email="Mixed.Case@Example.TEST")
    assert account.email == "Mixed.Case@Example.TEST"
    me = (await gql(api, ME, token=account.access_token))["data"]["me"]
    assert me == {"id": account.id, "email": "mixed.case@example.test", "displayName": "Test Person",
                  "age": me["age"]}
    assert me["age"] >= 18
    logged = (await gql(api, LOG_IN, {"e": "mixed.case@example.test", "p": account.password}))["data"]["logIn"]
    assert logged["__typename"] == "AuthPayload" and logged["me"]["id"] == account.id
    wrong = (await gql(api, LOG_IN, {"e": account.email, "p": "not the password"}))["data"]["logIn"]
    unknown = (await gql(api, LOG_IN, {"e": "nobody@example.test", "p": "whatever12"}))["data"]["logIn"]
    assert wrong == unknown == {"__typename": "AuthError", "code": "INVALID_CREDENTIALS"}


async def test_email_taken(api: str) -> None:
    account = await sign_up(api)
    again = await gql(api, """mutation($i: SignUpInput!) { signUp(input: $i) { ... on Error { code } } }""",
                      {"i": {"email": account.email.upper(), "password": "another password", "displayName": "X",
                             "birthDate": "1990-01-01", "gender": "MAN"}})
    assert again["data"]["signUp"]["code"] == "EMAIL_TAKEN"


async def test_refresh_rotates_and_reuse_ends_the_session(api: str) -> None:
    account = await sign_up(api)
    first = (await gql(api, REFRESH, {"t": account.refresh_token}))["data"]["refreshToken"]
    assert first["__typename"] == "AuthPayload" and first["refreshToken"] != account.refresh_token
    # The old refresh token comes back: someone else holds it, so the whole session ends.
    reused = (await gql(api, REFRESH, {"t": account.refresh_token}))["data"]["refreshToken"]
    assert reused == {"__typename": "AuthError", "code": "INVALID_REFRESH_TOKEN"}
    after = (await gql(api, REFRESH, {"t": first["refreshToken"]}))["data"]["refreshToken"]
    assert after["code"] == "INVALID_REFRESH_TOKEN"
    body = await gql(api, ME, token=first["accessToken"])
    assert error_code(body) == "UNAUTHENTICATED"
    assert body["errors"][0]["extensions"]["reason"] == "SESSION_ENDED"


async def test_garbage_refresh_tokens(api: str) -> None:
    for token in ("", "x", "a.b.c", "0" * 32 + "." + "0" * 32 + "." + "s" * 40, "\u00e9" * 300):
        result = (await gql(api, REFRESH, {"t": token}))["data"]["refreshToken"]
        assert result == {"__typename": "AuthError", "code": "INVALID_REFRESH_TOKEN"}, token


async def test_log_out_ends_only_this_session(api: str) -> None:
    account = await sign_up(api)
    other = (await gql(api, LOG_IN, {"e": account.email, "p": account.password}))["data"]["logIn"]
    assert (await gql(api, "mutation { logOut }", token=account.access_token))["data"]["logOut"] is True
    assert error_code(await gql(api, ME, token=account.access_token)) == "UNAUTHENTICATED"
    assert (await gql(api, ME, token=other["accessToken"]))["data"]["me"]["id"] == account.id
    refreshed = (await gql(api, REFRESH, {"t": account.refresh_token}))["data"]["refreshToken"]
    assert refreshed["code"] == "INVALID_REFRESH_TOKEN"


async def test_log_out_everywhere(api_servers: list[str]) -> None:
    api, other_api = api_servers
    account = await sign_up(api)
    second = (await gql(api, LOG_IN, {"e": account.email, "p": account.password}))["data"]["logIn"]
    assert (await gql(api, ME, token=second["accessToken"]))["data"]["me"]
    await gql(other_api, "mutation { logOutEverywhere }", token=account.access_token)
    for token in (account.access_token, second["accessToken"]):
        assert error_code(await gql(api, ME, token=token)) == "UNAUTHENTICATED"


async def test_expired_and_tampered_tokens(api: str, settings: Settings) -> None:
    account = await sign_up(api)
    signer = JwtSigner(settings.secret_key, 60)
    principal = Principal(uuid.UUID(account.id), uuid.uuid4(), datetime.now(UTC) + timedelta(days=1))
    expired, _ = signer.issue(principal, datetime.now(UTC) - timedelta(hours=1))
    body = await gql(api, ME, token=expired)
    assert error_code(body) == "UNAUTHENTICATED" and body["errors"][0]["extensions"]["reason"] == "TOKEN_EXPIRED"
    header, payload, signature = account.access_token.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    forged, _ = JwtSigner("another secret of the same sort and length", 60).issue(principal, datetime.now(UTC))
    for token in (tampered, forged, "not-a-jwt", "Bearer"):
        body = await gql(api, ME, token=token)
        assert error_code(body) == "UNAUTHENTICATED", token
        assert body["errors"][0]["extensions"]["reason"] == "TOKEN_INVALID"
    # Public fields still answer with a bad token: only the fields that need a user fail.
    assert (await gql(api, "{ interestTags { slug } }", token="garbage"))["data"]["interestTags"]


async def test_deleted_account_disappears(api: str) -> None:
    gone, viewer = await sign_up(api), await sign_up(api)
    person = "query($id: ID!) { person(id: $id) { id displayName } }"
    assert (await gql(api, person, {"id": gone.id}, viewer.access_token))["data"]["person"]["id"] == gone.id
    wrong = await gql(api, 'mutation { deleteAccount(password: "nope nope") { __typename ... on Error { code } } }',
                      token=gone.access_token)
    assert wrong["data"]["deleteAccount"] == {"__typename": "AuthError", "code": "INVALID_CREDENTIALS"}
    done = await gql(api, "mutation($p: String!) { deleteAccount(password: $p) { __typename } }",
                     {"p": gone.password}, gone.access_token)
    assert done["data"]["deleteAccount"]["__typename"] == "Done"
    body = await gql(api, person, {"id": gone.id}, viewer.access_token)
    assert body["data"]["person"] is None and error_code(body) == "NOT_FOUND"
    assert error_code(await gql(api, ME, token=gone.access_token)) == "UNAUTHENTICATED"
    login = (await gql(api, LOG_IN, {"e": gone.email, "p": gone.password}))["data"]["logIn"]
    assert login["code"] == "INVALID_CREDENTIALS"
    # The address is free again for a new account.
    assert (await sign_up(api, email=gone.email)).id != gone.id


async def test_person_exposes_only_public_fields(api: str) -> None:
    viewer, other = await sign_up(api), await sign_up(api)
    for field in ("email", "birthDate", "accessToken", "latitude", "distance"):
        body = await gql(api, f'query($id: ID!) {{ person(id: $id) {{ {field} }} }}', {"id": other.id},
                         viewer.access_token)
        assert error_code(body) == "GRAPHQL_VALIDATION_FAILED", field
    for bad in ("not-an-id", str(uuid.uuid4())):
        body = await gql(api, "query($id: ID!) { person(id: $id) { id } }", {"id": bad}, viewer.access_token)
        assert error_code(body) == "NOT_FOUND"
