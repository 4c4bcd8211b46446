import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from cross_web import HTTPException
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived, WebSocketDisconnected
from strawberry.schema import BaseSchema
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage as LegacyInitMessage
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET

from domain.errors import Code, DomainError
from domain.events import SessionsEnded, UserEvent
from domain.model import Principal
from domain.text import has_lone_surrogate
from infra.metrics import HTTP_REJECTIONS, WEBSOCKETS
from resolvers.context import Context, Ports, bearer_token

log = logging.getLogger(__name__)

GRAPHQL_RESPONSE = "application/graphql-response+json"
CLOSE_UNAUTHORIZED = 4401  # graphql-ws clients treat 4401 as final: refresh, then reconnect
CLOSE_TRY_AGAIN = 1012  # "service restart": clients reconnect and resume from their cursor
SWEEP_SECONDS = 1.0  # how often sockets are checked for a session that has lapsed


class HttpError(Exception):
    def __init__(self, status: int, code: Code, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_STATUS_CODES = {400: Code.BAD_REQUEST, 404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED,
                 413: Code.PAYLOAD_TOO_LARGE, 415: Code.UNSUPPORTED_MEDIA_TYPE}


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


def _not_json_on_socket(literal: str) -> Any:
    raise json.JSONDecodeError(f"{literal} is not JSON", literal, 0)


def _contains_surrogate(value: Any) -> bool:
    # Iterative: JSON nests deeper than Python's recursion limit long before 1 MB.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _retry_after(result: ExecutionResult) -> int | None:
    """The seconds to wait when rate limits refused the whole operation, else None."""
    if result.data is not None or not result.errors:
        return None
    waits = [(e.extensions or {}).get("retryAfterSeconds") for e in result.errors
             if (e.extensions or {}).get("code") == Code.RATE_LIMITED.value]
    if len(waits) != len(result.errors) or not all(isinstance(w, int) for w in waits):
        return None
    return max(int(w) for w in waits if w is not None)


def _wants_graphql_response(request: Request) -> bool:
    return GRAPHQL_RESPONSE in request.headers.get("accept", "")


_GRAPHIQL_PATCHES = (
    ("subscriptionUrl,\n", ("        wsConnectionParams: () => { try { return JSON.parse(window.nfHeaders || '{}'); }"
                            " catch (e) { return {}; } },\n")),
    ("function onEditHeaders(newHeaders) {", " window.nfHeaders = newHeaders;"),
    ("const [headers, setHeaders] = React.useState(parameters.headers);",
     " window.nfHeaders = parameters.headers;"),
)


CLOSE_BAD_MESSAGE = 4400
_REFUSALS = {
    "SIGN_IN_REQUIRED": "connection_init needs {Authorization: 'Bearer <token>'}",
    "TOKEN_EXPIRED": "The access token has expired: refresh it, then reconnect",
    "TOKEN_INVALID": "The access token is not valid",
    "SESSION_ENDED": "The session has ended: sign in again",
}
_OPERATION_TYPES = ("subscribe", "start")  # graphql-transport-ws, legacy graphql-ws


def _malformed(message: object) -> str | None:
    # strawberry's handlers index into frames without checking their shape: a list, a missing id or
    # a null payload would end in a traceback and an abrupt close instead of a 4400.
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "A message must be a JSON object with a string type"
    if "id" in message and not isinstance(message["id"], str):
        return "A message id must be a string"
    if message["type"] in _OPERATION_TYPES and (
            not isinstance(message.get("id"), str) or not isinstance(message.get("payload"), dict)):
        return "An operation needs a string id and an object payload"
    if "payload" in message and message["payload"] is not None and not isinstance(message["payload"], dict):
        return "A payload must be a JSON object"
    return None


def _bad_operation(operation: object) -> str | None:
    # strawberry checks the shape of a single request but takes a batch's items as they come: a
    # number among them ended in a 500, a number as the query in Python's own words.
    if not isinstance(operation, dict):
        return "Each operation must be a JSON object"
    if not isinstance(operation.get("query"), str):
        return "An operation needs its query as a string"
    for name, kind in (("variables", dict), ("extensions", dict), ("operationName", str)):
        if operation.get(name) is not None and not isinstance(operation[name], kind):
            return f"{name} must be {'a JSON object' if kind is dict else 'a string'}"
    return None


def _with_codes(payload: object) -> object:
    # Errors strawberry's protocol handlers make themselves (the subscription cap) skip the schema's
    # error extensions, and so come without the code every error carries.
    def coded(error: object) -> object:
        if isinstance(error, dict) and not (error.get("extensions") or {}).get("code"):
            return {**error, "extensions": {**(error.get("extensions") or {}), "code": Code.BAD_REQUEST.value}}
        return error
    return [coded(e) for e in payload] if isinstance(payload, list) else coded(payload)


class _Socket(ASGIWebSocketAdapter):
    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        # strawberry's loop with the checks in it, rather than a generator around strawberry's: one
        # generator fewer held for the socket's life.
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                try:
                    message = self.view.decode_json(await self.ws.receive_text())
                except json.JSONDecodeError as error:
                    if not ignore_parsing_errors:
                        raise NonJsonMessageReceived from error
                    continue
                problem = _malformed(message)
                if problem is not None:
                    await self.close(CLOSE_BAD_MESSAGE, problem)
                    return
                assert isinstance(message, dict)
                if message["type"] in _OPERATION_TYPES and _contains_surrogate(message["payload"]):
                    # Refused as over HTTP, for this operation alone: the socket and its others go on.
                    await self._refuse(message["id"], Code.BAD_USER_INPUT,
                                       "Request contains an unpaired UTF-16 surrogate")
                    continue
                yield message
        except KeyError as error:  # a binary frame: receive_text() found no text in it
            raise NonTextMessageReceived from error
        except WebSocketDisconnect:
            pass

    async def _refuse(self, operation_id: str, code: Code, text: str) -> None:
        error = {"message": text, "extensions": {"code": code.value}}
        legacy = getattr(self.ws.state, "subprotocol", None) != GRAPHQL_TRANSPORT_WS_PROTOCOL
        with suppress(WebSocketDisconnected):
            await self.send_json({"type": "error", "id": operation_id, "payload": error if legacy else [error]})

    # A socket this app already closed (a refused init, an ended session) must not make strawberry
    # fail when it then tries to answer or close it as well.
    async def send_json(self, message: Mapping[str, object]) -> None:
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            raise WebSocketDisconnected()
        if message.get("type") == "error":
            message = {**message, "payload": _with_codes(message.get("payload"))}
        await super().send_json(message)

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            await super().close(code, reason)


class _TransportWS(BaseGraphQLTransportWSHandler[Context, None]):
    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        # Cancelled by now; kept, it would hold its exception, traceback and frames as long as the socket.
        self.connection_init_timeout_task = None


class _LegacyWS(BaseGraphQLWSHandler[Context, None]):
    async def handle_connection_init(self, message: LegacyInitMessage) -> None:
        # Once is enough. strawberry would sign in again and start a second keep-alive task, which
        # outlives the socket and ends in a traceback once it is gone; the new protocol says 4429.
        if not self.connection_acknowledged:
            await super().handle_connection_init(message)


class GraphQLApp(GraphQL[Context, None]):
    """strawberry's ASGI app, stricter at the edges: bounded bodies, errors with codes on every path,
    the graphql-response+json media type, authenticated sockets that close when their session ends."""

    websocket_adapter_class = _Socket  # type: ignore[assignment]
    graphql_transport_ws_handler_class = _TransportWS
    graphql_ws_handler_class = _LegacyWS

    def __init__(
        self, schema: BaseSchema, ports: Callable[[], Ports], *, production: bool, max_body_bytes: int,
        allowed_origins: tuple[str, ...] = (), ping_seconds: float = 15, init_timeout_seconds: float = 10,
        body_timeout_seconds: float = 30,
    ) -> None:
        super().__init__(
            schema, graphql_ide=None if production else "graphiql", keep_alive=True,
            keep_alive_interval=ping_seconds, connection_init_wait_timeout=timedelta(seconds=init_timeout_seconds),
            max_subscriptions_per_connection=100, allowed_origins=allowed_origins,
        )
        self._ports = ports
        self._max_body = max_body_bytes
        self._init_timeout = init_timeout_seconds
        self._body_timeout = body_timeout_seconds
        self._sessions = _Sessions(ports)
        self._deadlines: dict[int, asyncio.TimerHandle] = {}  # sockets not yet signed in

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.serve_websocket(scope, receive, send)
            return
        request = Request(scope, receive=receive)
        try:
            await self._check_request(request)
            response = await self.run(request)
        except HTTPException as exc:
            status = exc.status_code
            if isinstance(exc.__cause__, InvalidOperationTypeError) and request.method == "GET":
                status = 405  # a mutation over GET: the method is wrong, not the request (GraphQL over HTTP)
            response = self._error_response(request, status, _STATUS_CODES.get(status, Code.BAD_REQUEST), exc.reason)
        except HttpError as exc:
            response = self._error_response(request, exc.status, exc.code, exc.message)
        except ClientDisconnect:
            return  # gone before its request was whole: no one to answer, nothing ran
        await response(scope, receive, send)

    async def _check_request(self, request: Request) -> None:
        if request.method not in ("GET", "POST"):
            raise HttpError(405, Code.METHOD_NOT_ALLOWED, "GraphQL accepts GET and POST only")
        if request.method == "GET":
            for name in ("variables", "extensions"):
                raw = request.query_params.get(name)
                self._check_document(self._parse(raw.encode()) if raw else None)
            return
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise HttpError(415, Code.UNSUPPORTED_MEDIA_TYPE, "Send the request as application/json")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_body:
            raise HttpError(413, Code.PAYLOAD_TOO_LARGE, f"Request body is over {self._max_body} bytes")
        body = bytearray()
        try:
            async with asyncio.timeout(self._body_timeout):
                async for chunk in request.stream():  # counted as it arrives: Content-Length may be absent
                    body += chunk
                    if len(body) > self._max_body:
                        raise HttpError(413, Code.PAYLOAD_TOO_LARGE, f"Request body is over {self._max_body} bytes")
        except TimeoutError:
            raise HttpError(408, Code.REQUEST_TIMEOUT,
                            f"Request body did not arrive within {self._body_timeout:g} s") from None
        request._body = bytes(body)  # starlette serves it from here to strawberry's parser
        document = self._parse(bytes(body))
        if not isinstance(document, dict | list):
            raise HttpError(400, Code.BAD_REQUEST, "Request body must be a JSON object")
        batching = self.schema.config.batching_config
        most = batching["max_operations"] if batching else 1
        if isinstance(document, list) and not 1 <= len(document) <= most:
            raise HttpError(400, Code.BAD_REQUEST, f"A batch holds 1 to {most} operations")
        for operation in document if isinstance(document, list) else [document]:
            problem = _bad_operation(operation)
            if problem:
                raise HttpError(400, Code.BAD_REQUEST, problem)
        self._check_document(document)

    @staticmethod
    def _parse(raw: bytes) -> Any:
        try:
            # NaN and Infinity are not JSON, though Python's parser takes them.
            return json.loads(raw, parse_constant=_not_json)
        except (ValueError, RecursionError):
            raise HttpError(400, Code.BAD_REQUEST, "Request body is not valid JSON") from None

    @staticmethod
    def _check_document(data: Any) -> None:
        # A lone surrogate survives json.loads and then breaks the first UTF-8 encode far away.
        if _contains_surrogate(data):
            raise HttpError(400, Code.BAD_USER_INPUT, "Request contains an unpaired UTF-16 surrogate")

    def _error_response(self, request: Request, status: int, code: Code, message: str) -> Response:
        HTTP_REJECTIONS.labels(code.value).inc()
        body = {"errors": [{"message": message, "extensions": {"code": code.value}}]}
        media = GRAPHQL_RESPONSE if _wants_graphql_response(request) else "application/json"
        # The rest of a body too slow to arrive is not waited for: the connection is done.
        headers = {"connection": "close"} if status == 408 else None
        return Response(json.dumps(body), status_code=status, media_type=media, headers=headers)

    async def render_graphql_ide(self, request: Request) -> Response:
        # GraphiQL sends its Headers tab with HTTP requests but not in the WebSocket connection_init,
        # so subscriptions would arrive unauthenticated; hand it the same headers for sockets too.
        html = self.graphql_ide_html
        for anchor, addition in _GRAPHIQL_PATCHES:
            if anchor in html:
                html = html.replace(anchor, anchor + addition, 1)
        return HTMLResponse(html)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        client = request.client.host if request.client else "unknown"
        header = None if isinstance(request, WebSocket) else request.headers.get("authorization")
        return Context(self._ports(), client, uuid.uuid4().hex, bearer_token(header), transport=request,
                       over_websocket=isinstance(request, WebSocket))

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        request.state.sub_response = sub_response
        return sub_response

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        data = await super().process_result(request, result)
        wait = _retry_after(result)
        if wait is None:
            request.state.answered = True
        else:
            request.state.retry_after = max(getattr(request.state, "retry_after", 0), wait)
        if _wants_graphql_response(request):
            request.state.graphql_response = True
            # A request error (nothing executed) carries no data entry and a 400 under this media type.
            if result.data is None and result.errors and all(e.path is None for e in result.errors):
                data.pop("data", None)
                request.state.sub_response.status_code = 400
        return data

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        response = await super().run(request, context, root_value)
        if isinstance(request, Request) and getattr(request.state, "graphql_response", False):
            response.headers["content-type"] = GRAPHQL_RESPONSE
        # Only when nothing of the request ran: a batch with one answer in it is not to be retried.
        wait: int = getattr(request.state, "retry_after", 0) if isinstance(request, Request) else 0
        if wait and not getattr(request.state, "answered", False):
            response.headers["retry-after"] = str(wait)
        return response

    def decode_json(self, data: str | bytes) -> object:
        # NaN and Infinity are not JSON, though Python's parser takes them: refused on sockets as
        # any other text that is not JSON (over HTTP the body check has refused them already).
        return json.loads(data, parse_constant=_not_json_on_socket)

    async def pick_websocket_subprotocol(self, request: WebSocket) -> str | None:
        chosen = await super().pick_websocket_subprotocol(request)
        request.state.subprotocol = chosen
        return chosen

    async def on_ws_connect(self, context: Context) -> dict[str, object] | None:
        params = context.connection_params or {}
        raw = params.get("Authorization") or params.get("authorization") or params.get("token")
        context.bearer = bearer_token(raw) if isinstance(raw, str) else None
        context.connection_params = None  # read once: the socket need not hold the token for its life
        principal = await context.authenticate()
        context.bearer = None  # checked, and the outcome kept: the token need not last as long as the socket
        ws = context.transport
        if principal is None and getattr(context.auth_error, "code", None) is Code.UNAVAILABLE:
            # The session could not be checked (Redis away): no refusal, come back in a moment.
            await self._close(ws, CLOSE_TRY_AGAIN, "Sign-in checks are unavailable; reconnect")
            raise ConnectionRejectionError({"code": Code.UNAVAILABLE.value})
        if principal is None:
            reason = getattr(context.auth_error, "reason", "SIGN_IN_REQUIRED")
            payload = {"code": Code.UNAUTHENTICATED.value, "reason": reason,
                       "message": _REFUSALS.get(reason, _REFUSALS["SIGN_IN_REQUIRED"])}
            if getattr(ws.state, "subprotocol", None) != GRAPHQL_TRANSPORT_WS_PROTOCOL:
                # The legacy protocol has no close codes of its own; strawberry would close with
                # 1011 (a server fault) after this message.
                with suppress(RuntimeError, OSError):
                    await ws.send_json({"type": "connection_error", "payload": payload})
            # strawberry would close graphql-transport-ws with 4403, which graphql-ws clients retry
            # with the same token; 4401 is final for them, and the reason says whether a refresh helps.
            await self._close(ws, CLOSE_UNAUTHORIZED, reason)
            raise ConnectionRejectionError(payload)
        try:
            await self._sessions.watch(ws, principal)
        except DomainError:
            # Without pub/sub this socket would not hear of a revocation: better closed than deaf.
            await self._close(ws, CLOSE_TRY_AGAIN, "Live events are unavailable; reconnect")
            raise ConnectionRejectionError({"code": Code.UNAVAILABLE.value}) from None
        deadline = self._deadlines.pop(id(ws), None)
        if deadline is not None:
            deadline.cancel()
        return None

    async def serve_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive=receive, send=send)
        WEBSOCKETS.inc()
        # The legacy graphql-ws protocol has no init deadline of its own: an unauthenticated
        # socket must not be able to sit here forever.
        self._deadlines[id(ws)] = asyncio.get_running_loop().call_later(
            self._init_timeout, self._close_if_anonymous, ws)
        try:
            await self.run(ws)
        finally:
            deadline = self._deadlines.pop(id(ws), None)
            if deadline is not None:
                deadline.cancel()
            WEBSOCKETS.dec()
            await self._sessions.forget(ws)

    def _close_if_anonymous(self, ws: WebSocket) -> None:
        if self._deadlines.pop(id(ws), None) is not None:
            _close_soon(ws, 4408, "Connection initialisation timeout")

    @staticmethod
    async def _close(ws: WebSocket, code: int, reason: str) -> None:
        with suppress(RuntimeError, OSError):
            await ws.close(code, reason)


_closing: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references


def _close_soon(ws: WebSocket, code: int, reason: str) -> None:
    task = asyncio.create_task(GraphQLApp._close(ws, code, reason))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


@dataclass(eq=False, slots=True)
class _Watched:
    ws: WebSocket
    principal: Principal
    expires: float  # loop time at which the session lapses
    stop: Callable[[], Awaitable[None]] | None = None
    ending: bool = False


class _Sessions:
    """Per process, every signed-in socket, closed when its session ends (revoked, or lapsed): one
    listener per socket on its person's channel and one sweep for all, rather than a task, a queue
    and a timer per socket."""

    def __init__(self, ports: Callable[[], Ports]) -> None:
        self._ports = ports
        self._sockets: dict[int, _Watched] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def watch(self, ws: WebSocket, principal: Principal) -> None:
        loop, ports = asyncio.get_running_loop(), self._ports()
        ttl = (principal.session_expires_at - ports.clock()).total_seconds()
        watched = _Watched(ws, principal, loop.time() + max(ttl, 0))
        watched.stop = await ports.user_events.watch(principal.user_id, partial(self._heard, watched))
        self._sockets[id(ws)] = watched
        ports.presence.connected(principal.user_id)  # online until forget()
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_SECONDS, self._expire)

    async def forget(self, ws: WebSocket) -> None:
        watched = self._sockets.pop(id(ws), None)
        if watched is None:
            return
        self._ports().presence.disconnected(watched.principal.user_id)
        if watched.stop is not None:
            with suppress(RedisError, OSError):  # the subscription dies with a lost connection anyway
                await watched.stop()

    def _heard(self, watched: _Watched, event: UserEvent | None) -> None:
        if event is None:
            # The connection to Redis dropped: a revocation may have been missed meanwhile.
            self._end(watched, CLOSE_TRY_AGAIN, "Live events interrupted; reconnect")
        elif isinstance(event, SessionsEnded) and event.covers(watched.principal.session_id):
            # The reason is a code clients switch on, as at connection_init.
            self._end(watched, CLOSE_UNAUTHORIZED, "SESSION_ENDED")

    def _end(self, watched: _Watched, code: int, reason: str) -> None:
        if not watched.ending and self._sockets.get(id(watched.ws)) is watched:
            watched.ending = True
            _close_soon(watched.ws, code, reason)

    def _expire(self) -> None:
        now = asyncio.get_running_loop().time()
        for watched in [w for w in self._sockets.values() if w.expires <= now]:
            self._end(watched, CLOSE_UNAUTHORIZED, "SESSION_ENDED")
        self._sweep = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._expire) if self._sockets else None
