"""Request log and daily usage rollups.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("method", sa.String(10), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("overhead_ms", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("audio_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("images", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("characters", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_request_log_key_ts", "request_log", ["key_id", "ts"])
    op.create_index("ix_request_log_ts", "request_log", ["ts"])
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("errors", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("audio_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("images", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("characters", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False, server_default="0"),
        sa.Column("overhead_ms_sum", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("day", "key_id", "model", name="pk_usage_daily"),
    )
    op.create_index("ix_usage_daily_key_day", "usage_daily", ["key_id", "day"])
    op.create_index("ix_usage_daily_user_day", "usage_daily", ["user_id", "day"])


def downgrade() -> None:
    op.drop_index("ix_usage_daily_user_day", table_name="usage_daily")
    op.drop_index("ix_usage_daily_key_day", table_name="usage_daily")
    op.drop_table("usage_daily")
    op.drop_index("ix_request_log_ts", table_name="request_log")
    op.drop_index("ix_request_log_key_ts", table_name="request_log")
    op.drop_table("request_log")
