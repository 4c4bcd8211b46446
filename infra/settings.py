import os
import secrets
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path


class ConfigError(Exception):
    pass


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return default if raw in (None, "") else int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return default if raw in (None, "") else float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".data")
    database_url: str = ""
    redis_url: str = ""
    s3_endpoint_url: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "newfriends"
    s3_region: str = "us-east-1"
    # Every Redis key and channel starts with this, so several deployments (or test runs) can share
    # one Redis without seeing each other.
    redis_prefix: str = "nf:"
    secret_key: str = field(default="", repr=False)
    access_ttl: timedelta = timedelta(minutes=15)
    refresh_ttl: timedelta = timedelta(days=30)
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    # Replicas that must confirm a write before it is acknowledged to a client (Redis WAIT).
    ack_replicas: int = 0
    ack_timeout_ms: int = 500
    max_body_bytes: int = 1_000_000
    trusted_proxies: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    db_pool_max: int = 10
    ws_init_timeout_seconds: int = 10
    # A whole request body, however it trickles in: a megabyte at 50 KB/s fits, a held-open socket does not.
    body_timeout_seconds: int = 30
    swipe_partitions: int = 16
    # Partitions of the chat stream, as the design's 100 queue partitions: each chat stays on one,
    # whose single consumer keeps it in order. The same value on every process.
    chat_partitions: int = 100
    chat_recent_messages: int = 1000  # per chat, in Redis; older ones come from the archive
    # The aggregator's windows (one S3 object per partition per window) and its local log: an empty
    # directory means <data_dir>/chat-wal. Past wal_max_mb of records not archived yet (S3 away) it
    # stops taking entries, which then wait in the chat stream.
    archive_window_seconds: float = 600.0
    archive_wal_dir: str = ""
    archive_wal_max_mb: int = 512
    # An ended chat's archive is erased at once, or after this many days when it was reported.
    archive_report_hold_days: float = 90.0
    likes_per_day: int = 100
    super_likes_per_day: int = 1
    undo_window_seconds: int = 300
    bench_noop: bool = False  # adds the benchNoop mutation, for bench/swipes.py only
    metrics_port: int = 0  # workers only; the API serves /metrics itself
    # How long a dead stream consumer's partitions stay unowned before another one takes them over.
    stream_lease_seconds: float = 10.0
    # People nearby. An empty path means the GeoLite2 City database shipped with maxminddb-geolite2.
    geoip_database: str = ""
    device_location_days: int = 7
    inactive_days: int = 30
    location_updates_per_hour: int = 30
    location_cells_per_day: int = 20
    location_limits: bool = True  # off only for tests that play an attacker; refused in production
    # Photos. Public URLs start with the CDN's base URL (empty: the bucket's own URL, for development).
    photo_cdn_url: str = ""
    photo_upload_seconds: int = 300  # how long a presigned upload stays valid
    photo_uploads_per_hour: int = 30
    # How long a photo worker holds a photo before another may take it: longer than the slowest
    # photo takes (a dead worker's photos wait that long).
    photo_lease_seconds: float = 120.0
    rate_limit_scale: float = 1.0  # multiplies every rate limit (domain/ratelimits.py); 0 turns them off

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ.get("NEWFRIENDS_ENV", "development")
        if env not in ("development", "production"):
            raise ConfigError("NEWFRIENDS_ENV must be 'development' or 'production'")
        settings = cls(
            env=env,
            host=os.environ.get("HOST", "127.0.0.1"),
            port=_int("PORT", 8000),
            data_dir=Path(os.environ.get("NEWFRIENDS_DATA_DIR", ".data")),
            database_url=os.environ.get("DATABASE_URL", ""),
            redis_url=os.environ.get("REDIS_URL", ""),
            s3_endpoint_url=os.environ.get("S3_ENDPOINT_URL", ""),
            s3_access_key=os.environ.get("S3_ACCESS_KEY", os.environ.get("AWS_ACCESS_KEY_ID", "")),
            s3_secret_key=os.environ.get("S3_SECRET_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY", "")),
            s3_bucket=os.environ.get("S3_BUCKET", "newfriends"),
            s3_region=os.environ.get("S3_REGION", "us-east-1"),
            redis_prefix=os.environ.get("REDIS_PREFIX", "nf:"),
            secret_key=os.environ.get("NEWFRIENDS_SECRET_KEY", ""),
            access_ttl=timedelta(seconds=_int("ACCESS_TOKEN_TTL_SECONDS", 900)),
            refresh_ttl=timedelta(seconds=_int("REFRESH_TOKEN_TTL_SECONDS", 30 * 86400)),
            argon2_time_cost=_int("ARGON2_TIME_COST", 3),
            argon2_memory_kib=_int("ARGON2_MEMORY_KIB", 65536),
            ack_replicas=_int("ACK_REPLICAS", 0),
            ack_timeout_ms=_int("ACK_TIMEOUT_MS", 500),
            max_body_bytes=_int("MAX_BODY_BYTES", 1_000_000),
            trusted_proxies=_list("TRUSTED_PROXIES"),
            allowed_origins=_list("ALLOWED_ORIGINS"),
            db_pool_max=_int("DB_POOL_MAX", 10),
            ws_init_timeout_seconds=_int("WS_INIT_TIMEOUT_SECONDS", 10),
            body_timeout_seconds=_int("BODY_TIMEOUT_SECONDS", 30),
            swipe_partitions=_int("SWIPE_PARTITIONS", 16),
            chat_partitions=_int("CHAT_PARTITIONS", 100),
            chat_recent_messages=_int("CHAT_RECENT_MESSAGES", 1000),
            archive_window_seconds=_float("ARCHIVE_WINDOW_SECONDS", 600.0),
            archive_wal_dir=os.environ.get("ARCHIVE_WAL_DIR", ""),
            archive_wal_max_mb=_int("ARCHIVE_WAL_MAX_MB", 512),
            archive_report_hold_days=_float("ARCHIVE_REPORT_HOLD_DAYS", 90.0),
            likes_per_day=_int("LIKES_PER_DAY", 100),
            super_likes_per_day=_int("SUPER_LIKES_PER_DAY", 1),
            undo_window_seconds=_int("UNDO_WINDOW_SECONDS", 300),
            bench_noop=os.environ.get("NEWFRIENDS_BENCH_NOOP") == "1",
            metrics_port=_int("METRICS_PORT", 0),
            stream_lease_seconds=_float("STREAM_LEASE_SECONDS", 10.0),
            geoip_database=os.environ.get("GEOIP_DATABASE", ""),
            device_location_days=_int("DEVICE_LOCATION_DAYS", 7),
            inactive_days=_int("INACTIVE_DAYS", 30),
            location_updates_per_hour=_int("LOCATION_UPDATES_PER_HOUR", 30),
            location_cells_per_day=_int("LOCATION_CELLS_PER_DAY", 20),
            location_limits=os.environ.get("LOCATION_LIMITS", "on") != "off",
            photo_cdn_url=os.environ.get("PHOTO_CDN_URL", ""),
            photo_upload_seconds=_int("PHOTO_UPLOAD_SECONDS", 300),
            photo_uploads_per_hour=_int("PHOTO_UPLOADS_PER_HOUR", 30),
            photo_lease_seconds=_float("PHOTO_LEASE_SECONDS", 120.0),
            rate_limit_scale=_float("RATE_LIMIT_SCALE", 1.0),
        )
        if settings.production and settings.rate_limit_scale <= 0:
            raise ConfigError("RATE_LIMIT_SCALE=0 (no rate limits) is for tests only")
        if settings.rate_limit_scale < 0:
            raise ConfigError("RATE_LIMIT_SCALE must be 0 or more")
        if settings.production and not settings.location_limits:
            raise ConfigError("LOCATION_LIMITS=off is for tests only")
        if settings.production and len(settings.secret_key) < 32:
            raise ConfigError("NEWFRIENDS_SECRET_KEY (at least 32 characters) is required in production")
        if settings.chat_partitions < 1 or settings.chat_recent_messages < 1:
            raise ConfigError("CHAT_PARTITIONS and CHAT_RECENT_MESSAGES must be positive")
        if settings.archive_window_seconds <= 0 or settings.archive_wal_max_mb < 1:
            raise ConfigError("ARCHIVE_WINDOW_SECONDS and ARCHIVE_WAL_MAX_MB must be positive")
        if settings.archive_report_hold_days < 0:
            raise ConfigError("ARCHIVE_REPORT_HOLD_DAYS must not be negative")
        if settings.stream_lease_seconds <= 0:
            raise ConfigError("STREAM_LEASE_SECONDS must be positive")
        if settings.photo_lease_seconds <= 0:
            raise ConfigError("PHOTO_LEASE_SECONDS must be positive")
        return settings

    def with_dev_secret(self) -> "Settings":
        # Development keeps a generated key in the data directory so tokens survive restarts.
        if self.secret_key:
            return self
        path = self.data_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return replace(self, secret_key=path.read_text().strip())
