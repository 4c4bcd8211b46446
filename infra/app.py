import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from domain.chat import ChatDeps
from domain.locations import LocationDeps, LocationLimits
from domain.nearby import NearbyDeps
from domain.photos import PhotoDeps, PhotoLimits
from domain.swipes import Limits, SwipeDeps
from infra.archive import S3ChatArchive, S3Objects
from infra.archive_keys import ErasingCloser, PgArchiveKeys, Sealer
from infra.broadcast import make_broadcast
from infra.buckets import RedisBuckets, RedisCandidateLists
from infra.chat_log import RedisChatBus, RedisChatLog, chats_spec
from infra.db import open_pool
from infra.events import UserChannels
from infra.geoip import MaxMindGeoIp, packaged_database
from infra.graphql_app import GraphQLApp
from infra.metrics import ASYNCIO_TASKS, REGISTRY, Metrics
from infra.pg_archive import PgArchiveIndex
from infra.pg_chats import PgChatMembers, PgSequences
from infra.pg_locations import PgActivity, PgLocations
from infra.pg_photos import PgPhotos
from infra.pg_relations import PgRelations
from infra.pg_users import PgSessions, PgUsers
from infra.photo_store import photo_store, s3_client
from infra.presence import RedisPresence
from infra.quotas import RedisQuotas
from infra.rate_limiter import RedisRateLimiter
from infra.redis_client import close_redis, open_redis
from infra.security import Argon2Hasher, JwtSigner
from infra.settings import Settings
from infra.swipe_queue import RedisSwipeQueue, swipes_spec
from resolvers.context import Ports
from schema import build_schema

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool | None = None
    redis: aioredis.Redis | None = None
    ports: Ports | None = None

    def require_ports(self) -> Ports:
        if self.ports is None:
            raise RuntimeError("the application has not started")
        return self.ports


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(settings.database_url, settings.db_pool_max))
        redis = open_redis(settings.redis_url)
        stack.push_async_callback(close_redis, redis)
        broadcast = await stack.enter_async_context(make_broadcast(settings.redis_url))
        channels = UserChannels(broadcast, settings.redis_prefix)
        rate_limiter = RedisRateLimiter(redis, settings.redis_prefix, scale=settings.rate_limit_scale)
        await rate_limiter.start()
        stack.push_async_callback(rate_limiter.close)
        limits = Limits(settings.likes_per_day, settings.super_likes_per_day,
                        timedelta(seconds=settings.undo_window_seconds))
        queue = RedisSwipeQueue(redis, swipes_spec(settings.redis_prefix, settings.swipe_partitions),
                                limits.undo_window, settings.ack_replicas, settings.ack_timeout_ms)
        relations, quotas = PgRelations(pool), RedisQuotas(redis, settings.redis_prefix)
        chat_spec = chats_spec(settings.redis_prefix, settings.chat_partitions)
        chat_log = RedisChatLog(redis, chat_spec, settings.chat_recent_messages, settings.ack_replicas,
                                settings.ack_timeout_ms)
        sealer = Sealer.from_secret(settings.secret_key)
        archive = S3ChatArchive(PgArchiveIndex(pool, chat_spec.scope), S3Objects(s3_client(
            settings.s3_endpoint_url, settings.s3_access_key, settings.s3_secret_key, settings.s3_region),
            settings.s3_bucket), sealer)
        closer = ErasingCloser(chat_log, PgArchiveKeys(pool, sealer),
                               timedelta(days=settings.archive_report_hold_days), lambda: datetime.now(UTC))
        chats = ChatDeps(PgChatMembers(pool), PgSequences(pool), chat_log,
                         RedisChatBus(broadcast, settings.redis_prefix))
        swipe_deps = SwipeDeps(PgUsers(pool), queue, relations, channels, limits, chats=closer)
        geoip = MaxMindGeoIp(Path(settings.geoip_database) if settings.geoip_database else packaged_database())
        stack.callback(geoip.close)
        places = LocationDeps(PgLocations(pool), quotas, geoip, PgActivity(pool), LocationLimits(
            device_fresh_for=timedelta(days=settings.device_location_days),
            updates_per_hour=settings.location_updates_per_hour,
            distinct_cells_per_day=settings.location_cells_per_day, enforce=settings.location_limits,
        ))
        cursor_key = hashlib.sha256(b"cursors:" + settings.secret_key.encode()).digest()
        nearby = NearbyDeps(swipe_deps, places, RedisBuckets(redis, settings.redis_prefix),
                            RedisCandidateLists(redis, settings.redis_prefix), relations, cursor_key,
                            timedelta(days=settings.inactive_days))
        presence = RedisPresence(redis, settings.redis_prefix)
        await stack.enter_async_context(presence.running())
        ports = Ports(
            users=PgUsers(pool), sessions=PgSessions(pool, redis, settings.redis_prefix),
            hasher=Argon2Hasher(settings.argon2_time_cost, settings.argon2_memory_kib),
            tokens=JwtSigner(settings.secret_key, settings.access_ttl.total_seconds()),
            events=channels, user_events=channels, refresh_ttl=settings.refresh_ttl, swipes=swipe_deps,
            cursor_key=cursor_key, places=places, nearby=nearby, chats=chats,
            photos=PhotoDeps(PgPhotos(pool), photo_store(settings), quotas, channels, PhotoLimits(
                upload_ttl=timedelta(seconds=settings.photo_upload_seconds),
                uploads_per_hour=settings.photo_uploads_per_hour)),
            presence=presence, rate_limiter=rate_limiter, archive=archive,
        )
        yield Runtime(settings, pool, redis, ports)


class _Api(Starlette):
    """Sockets on /graphql go straight to the GraphQL app. A socket lives for hours, and each
    middleware and routing layer it passes keeps a suspended frame (and a closure or two) for all
    that time; none of them acts on a WebSocket here (CORS is for HTTP, the sockets' origins are
    checked by the GraphQL app, and an error in it ends the connection either way)."""

    def __init__(self, graphql: GraphQLApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._graphql = graphql

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Under a root_path the router's matching is needed: the path is then longer than this.
        if scope["type"] == "websocket" and scope["path"] == "/graphql":
            scope["app"] = self
            await self._graphql.serve_websocket(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> Starlette:
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_runtime(settings) as opened:
            runtime.pool, runtime.redis, runtime.ports = opened.pool, opened.redis, opened.ports
            yield

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}
        for name, probe in (("postgres", _pg_ping(runtime)), ("redis", _redis_ping(runtime))):
            try:
                await asyncio.wait_for(probe, 2)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"down: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        # Read here, on the loop: a gauge callback would also run in workers' exporter threads.
        ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    graphql = GraphQLApp(
        build_schema(production=settings.production, extensions=[Metrics], bench_noop=settings.bench_noop),
        runtime.require_ports,
        production=settings.production, max_body_bytes=settings.max_body_bytes,
        allowed_origins=settings.allowed_origins, init_timeout_seconds=settings.ws_init_timeout_seconds,
        body_timeout_seconds=settings.body_timeout_seconds,
    )
    middleware = []
    if settings.allowed_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.allowed_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"]))
    return _Api(
        graphql,
        routes=[
            Route("/graphql", graphql),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        ],
        middleware=middleware, lifespan=lifespan,
    )


async def _pg_ping(runtime: Runtime) -> None:
    if runtime.pool is None:
        raise RuntimeError("no pool")
    await runtime.pool.fetchval("SELECT 1")


async def _redis_ping(runtime: Runtime) -> None:
    if runtime.redis is None:
        raise RuntimeError("no redis")
    await runtime.redis.ping()
