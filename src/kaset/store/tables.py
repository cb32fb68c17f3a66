"""Database tables (SQLAlchemy 2 declarative). Schema changes go through Alembic migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    # scrypt hash (see kaset.auth.passwords); None for users who only use API keys.
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Set (by the database clock) on every change that matters to authentication: replicas poll
    # this indexed column to drop cached credentials (kaset.auth.cache).
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    # Users are disabled rather than deleted, so keys and audit rows keep pointing at someone.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # kaset.quotas.Limits as a dict; None: the server's default user limits.
    limits: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 of the whole key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    # The first characters of the key, so people can tell their keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", name="fk_api_keys_user_id_users"),
                                         index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    # Model ids/aliases this key may call; None means every model.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # kaset.quotas.Limits as a dict; None: the server's default key limits.
    limits: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    # See User.updated_at.
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)


class AuditEntry(Base):
    """One row per administrative action (users, keys), written in the action's transaction."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    # Who: the acting user and key when the action came through the API; `actor` is always set
    # (a username, or e.g. "cli:alice" / "system:bootstrap") so rows stay readable on their own.
    actor: Mapped[str] = mapped_column(String(200))
    actor_user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Job(Base):
    """A durable async job (kaset.jobs): its input files live under <data_dir>/jobs/<id>/, never here."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # pending | in_progress | completed | failed | canceled
    status: Mapped[str] = mapped_column(String(20))
    # Whose job: the user (any of their keys or sign-ins sees it); the key used, for the record.
    owner_user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    owner_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The job's options (model, language, response format, ...), not its input data.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    # {"message", "type", "code", "param"} when failed.
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Bumped by every claim: the final write must name the attempt that claimed the job, so a
    # runner whose job was taken back (it looked dead, or was canceled) can never write.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Who runs it (host:pid:...), and when it last said it is still running.
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # finished_at + KASET_JOB_RESULT_TTL_S: the periodic cleanup deletes the row and its files after.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)


class RefreshToken(Base):
    """An issued refresh token (kaset.auth.tokens), by its `jti`. Each use replaces it with a new
    one of the same family (one sign-in); a replaced token used again after a short grace window
    means it was copied, and the whole family is revoked. Signing out revokes the family."""

    __tablename__ = "refresh_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    family: Mapped[str] = mapped_column(String(64), index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    replaced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
