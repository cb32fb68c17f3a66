"""The request log and its daily rollups (SQLAlchemy Core tables; migration 0003).

Core tables rather than ORM classes: rows are written in bulk by the flusher and read by
aggregate queries, never loaded as objects. They share `Base.metadata` so Alembic and
`metadata.create_all` see them with the rest of the schema.

No foreign keys to api_keys/users: a log row must outlive the key that made it (keys are
deleted, logs are kept for their retention), and the flusher must never fail a whole batch
because one key vanished in between.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
)

from kaset.store.tables import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY (its rowid); PostgreSQL gets a BIGSERIAL.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

request_log = Table(
    "request_log",
    Base.metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    # When the request arrived (UTC).
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("key_id", Integer, nullable=True),
    Column("user_id", Integer, nullable=True),
    # The route template (/v2/models/{name}/infer), never the raw path.
    Column("route", String(200), nullable=False),
    Column("method", String(10), nullable=False),
    Column("model", String(200), nullable=True),
    Column("status", SmallInteger, nullable=False),
    Column("latency_ms", Float, nullable=False),
    # Wall time minus time inside models: what the gateway itself cost.
    Column("overhead_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=False, server_default="0"),
    Column("completion_tokens", Integer, nullable=False, server_default="0"),
    Column("audio_seconds", Float, nullable=False, server_default="0"),
    Column("images", Integer, nullable=False, server_default="0"),
    Column("characters", Integer, nullable=False, server_default="0"),
    # Per-key time queries (a user's rows: key_id IN their few keys), and ts alone for
    # retention. No user index: each index costs write time and bytes on every row.
    Index("ix_request_log_key_ts", "key_id", "ts"),
    Index("ix_request_log_ts", "ts"),
)

# The columns the flusher writes, in the order of a buffered row (see request_log.LogRow).
LOG_COLUMNS = (
    "ts", "request_id", "key_id", "user_id", "route", "method", "model", "status", "latency_ms", "overhead_ms",
    "prompt_tokens", "completion_tokens", "audio_seconds", "images", "characters",
)

usage_daily = Table(
    "usage_daily",
    Base.metadata,
    Column("day", Date, nullable=False),
    # 0 when the request carried no key (auth disabled): NULL would defeat the upsert's
    # conflict target, since NULLs never conflict in a unique index.
    Column("key_id", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("user_id", Integer, nullable=True),
    Column("requests", BigInteger, nullable=False, server_default="0"),
    Column("errors", BigInteger, nullable=False, server_default="0"),
    Column("prompt_tokens", BigInteger, nullable=False, server_default="0"),
    Column("completion_tokens", BigInteger, nullable=False, server_default="0"),
    Column("audio_seconds", Float, nullable=False, server_default="0"),
    Column("images", BigInteger, nullable=False, server_default="0"),
    Column("characters", BigInteger, nullable=False, server_default="0"),
    Column("latency_ms_sum", Float, nullable=False, server_default="0"),
    Column("overhead_ms_sum", Float, nullable=False, server_default="0"),
    PrimaryKeyConstraint("day", "key_id", "model", name="pk_usage_daily"),
    Index("ix_usage_daily_key_day", "key_id", "day"),
    Index("ix_usage_daily_user_day", "user_id", "day"),
)

ROLLUP_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "audio_seconds", "images", "characters",
               "latency_ms_sum", "overhead_ms_sum")
