"""Configuration read from COLDCHAIN_* environment variables and an optional .env file.

One settings object for the whole process; every room reads it through
`get_settings()` so tests can swap it by clearing the cache.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob an operator may turn (CONTRACTS.md sections 0 and 1)."""

    model_config = SettingsConfigDict(env_prefix="COLDCHAIN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="where embedded defaults keep their files")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; unset: a SQLite file")
    mqtt_url: str | None = Field(default=None, description="mqtt://host:port; unset: an embedded broker")
    broker_url: str | None = Field(default=None, description="Celery broker; unset: SQLite transport")
    celery_queue: str = Field(default="celery", description="queue that tasks go to and workers listen on")
    secret_key: str = Field(default="change-me-in-production-coldchain-secret-key", min_length=32)
    timezone: str = Field(default="Asia/Shanghai", description="an IANA zone name such as Asia/Shanghai")
    token_minutes: int = Field(default=15, ge=1, le=24 * 60, description="minutes an access token lives")
    order_cutoff: str = Field(default="20:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                              description="a local time HH:MM")
    default_service_radius_km: float = Field(default=5.0, gt=0, le=100,
                                             description="radius served by a node without a service-area polygon")
    mqtt_broker_log: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="WARNING",
        description="one of DEBUG, INFO, WARNING, ERROR, CRITICAL: the embedded MQTT broker's log level")
    osrm_url: str | None = Field(default=None, description="an OSRM server for road durations; unset: geodesic x 1.3")
    # API security (SECURITY.md): token lifetimes, rate limits, body limits, scenario folder, CORS.
    refresh_token_days: int = Field(default=14, ge=1, le=365,
                                    description="days a refresh token lives; each use rotates it")
    rate_limit_url: str | None = Field(default=None, description=(
        "where rate-limit counts live, shared by every API worker (redis://host:port/db); unset: the Redis "
        "broker URL if COLDCHAIN_BROKER_URL is one, else each process's memory"))
    login_limit_per_user: str = Field(default="5/minute",
                                      description="failed logins allowed per username, as N/second|minute|hour")
    login_limit_per_address: str = Field(default="20/minute",
                                         description="failed logins allowed per client address, as N/minute")
    rate_limit_per_caller: str = Field(default="600/minute",
                                       description="requests allowed per authenticated user, as N/minute")
    rate_limit_per_address: str = Field(default="120/minute",
                                        description="unauthenticated requests allowed per client address, as N/minute")
    risk_open_ttl_s: float = Field(default=60.0, ge=0, le=3600, description=(
        "seconds a risk assessment of goods still aboard is reused while nothing it depends on was stored "
        "(time alone moves it: a reading holds up to 15 min, unmonitored time grows); the driver's check on "
        "delivery and the quality at-risk list both"))
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024,
                                description="largest request body in bytes, unless api.limits.BODY_LIMITS allows more")
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024,
                                  description="largest upload in bytes (order CSV files, scenario zip or CSV files)")
    scenario_dir: Path | None = Field(default=None, description=(
        "the one server folder POST /api/v1/scenarios/load may read scenario folders from; unset: uploads only"))
    scenario_unpacked_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024,
                                             description="largest total size of a scenario upload once unpacked")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "comma-separated browser origins allowed to call the API (https://app.example.com); unset: CORS closed"))
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "comma-separated Host names the API answers to (api.example.com); unset: any host"))

    clock: str | None = Field(default=None, description=(
        "unset: the real time; file:PATH: a simulated clock kept in PATH (coldchain demo), read by every "
        "process given the same file"))

    @field_validator("clock")
    @classmethod
    def _clock_spec(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith("file:") or len(value) <= len("file:"):
            raise ValueError("COLDCHAIN_CLOCK must be file:PATH")
        return value

    @field_validator("login_limit_per_user", "login_limit_per_address", "rate_limit_per_caller",
                     "rate_limit_per_address")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate such as 5/minute") from exc
        return value

    @field_validator("mqtt_broker_log", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def rate_limit_storage(self) -> str:
        """The limits storage URI: the configured one, else a Redis broker, else process memory."""
        if self.rate_limit_url:
            return self.rate_limit_url
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return "memory://"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
            raise ValueError("COLDCHAIN_MQTT_URL must look like mqtt://host:port")
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'coldchain.db').resolve()}"

    @property
    def celery_broker(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'celery-broker.db').resolve()}"

    @property
    def celery_backend(self) -> str:
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return f"db+sqlite:///{(self.data_dir / 'celery-results.db').resolve()}"

    def ensure_data_dir(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir

    # routing: a van back at its depot between two trips of the day (CONTRACTS.md section 5)
    reload_minutes: float = Field(default=20, ge=0, le=240, description=(
        "minutes a van spends at its depot to reload between two trips of the day"))

    # the driver delivery API (delivery/)
    idempotency_hours: float = Field(default=24, gt=0, le=24 * 365,
                                     description="how long a driver's Idempotency-Key is remembered")
    db_pool_size: int = Field(default=10, ge=1, le=200, description=(
        "database connections each process keeps open (SQLAlchemy pool_size), and so how many requests an API "
        "process lets in at once: each holds one, and a connection opened beyond the pool is closed again when "
        "given back (a new PostgreSQL backend for every request of a burst)"))
    db_max_overflow: int = Field(default=5, ge=0, le=200, description=(
        "connections a process may open beyond the pool, for what runs beside its requests"))
    db_ping_idle_s: float = Field(default=30, ge=0, le=86400, description=(
        "seconds a pooled PostgreSQL connection may sit unused before it is pinged when taken again "
        "(one round trip; 0: every time); a connection the server has closed is noticed without a ping"))
    proof_dir: Path | None = Field(default=None, description="where proof-of-delivery photos are kept; "
                                                             "unset: data_dir/proofs")

    # the browser consoles (api/console)
    tile_url: str | None = Field(default=None, description=(
        "a map tile URL template such as https://tile.example.com/{z}/{x}/{y}.png for the dispatcher's map; "
        "unset: the map draws on a plain background"))
    tile_attribution: str = Field(default="", max_length=500, description="the attribution shown with the tiles")
    console_secure_cookie: bool = Field(default=False, description=(
        "send the console's session cookie only over HTTPS (set it behind TLS)"))
    console_session_hours: float = Field(default=12, gt=0, le=24 * 30,
                                         description="hours a console login lasts")
    console_poll_seconds: float = Field(default=2.0, ge=0.1, le=60, description=(
        "how often a console's live stream looks for new alerts and van positions"))
    proof_store: str | None = Field(default=None, description=(
        "s3://bucket/prefix: keep proofs in an S3-compatible object store instead of COLDCHAIN_PROOF_DIR"))
    s3_endpoint_url: str | None = Field(default=None, description=(
        "the S3-compatible service's URL (http://127.0.0.1:9000 for MinIO); unset: AWS S3 of COLDCHAIN_S3_REGION"))
    s3_region: str = Field(default="us-east-1", min_length=1, max_length=64, description="the store's region")
    s3_access_key_id: str | None = Field(default=None, description=(
        "the store's access key; unset: boto3's own chain (AWS_* variables, ~/.aws, an instance role)"))
    s3_secret_access_key: SecretStr | None = Field(default=None, description="the secret of that access key")

    @field_validator("proof_store")
    @classmethod
    def _s3_store(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parsed = urlparse(value)
        if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
            raise ValueError("COLDCHAIN_PROOF_STORE must look like s3://bucket or s3://bucket/prefix")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("COLDCHAIN_S3_ENDPOINT_URL must look like http(s)://host:port")
        return value

    @property
    def proofs_path(self) -> Path:
        return self.proof_dir if self.proof_dir is not None else self.data_dir / "proofs"


class ConfigError(Exception):
    """Invalid COLDCHAIN_* settings, one line per problem: the variable, what is wrong, what is expected."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _expected(name: str) -> str:
    field = Settings.model_fields.get(name)
    if field is None:
        return ""
    parts = []
    for meta in field.metadata:
        for attr, words in (("min_length", "at least {} characters"), ("ge", ">= {}"), ("gt", "> {}"),
                            ("le", "<= {}")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(words.format(value))
    if field.description:
        parts.append(field.description)
    return "; expected " + ", ".join(parts) if parts else ""


def config_error(exc: ValidationError) -> ConfigError:
    """Turn pydantic's report into lines an operator can act on (no traceback)."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error.get("loc") else "?"
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        got = error.get("input")
        hidden = name in ("secret_key", "s3_secret_access_key") or got is None or isinstance(got, dict)
        shown = "" if hidden else f" (got {str(got)[:60]!r})"
        if name == "secret_key" and isinstance(got, str):
            shown = f" (got {len(got)} characters)"
        lines.append(f"COLDCHAIN_{name.upper()}: {message}{shown}{_expected(name)}")
    return ConfigError(lines)


@lru_cache
def get_settings() -> Settings:
    """The process's settings; raises ConfigError naming every invalid variable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise config_error(exc) from None
    try:
        settings.ensure_data_dir()
    except OSError as exc:
        raise ConfigError([f"COLDCHAIN_DATA_DIR: cannot create {settings.data_dir} ({exc.strerror}); "
                           "expected a writable folder"]) from None
    return settings
