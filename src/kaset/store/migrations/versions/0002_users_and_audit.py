"""Users and roles, key ownership (allowlist, expiry, label), audit log.

Existing keys keep working: each one gets an owning user. Its old role maps to the user's
role ('admin' -> admin, 'user' -> consumer: consumer is what an old 'user' key could do, call
models, and nothing more). The first active admin key's owner is named 'admin'; the others
'key-<id>', so per-user accounting later does not merge unrelated legacy keys into one user.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Lightweight table handles for the data migration: the ORM models follow head, not this step.
_keys = sa.table(
    "api_keys",
    sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("role", sa.String),
    sa.column("label", sa.String), sa.column("user_id", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)), sa.column("revoked_at", sa.DateTime(timezone=True)),
)
_users = sa.table(
    "users",
    sa.column("id", sa.Integer), sa.column("username", sa.String), sa.column("role", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)), sa.column("disabled_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(100), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_index("ix_users_updated_at", "users", ["updated_at"])

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("label", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("allowed_models", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))

    conn = op.get_bind()
    rows = conn.execute(sa.select(_keys.c.id, _keys.c.name, _keys.c.role, _keys.c.created_at, _keys.c.revoked_at)
                        .order_by(_keys.c.id)).all()
    admin_named = False
    for row in rows:
        role = "admin" if row.role == "admin" else "consumer"
        username = f"key-{row.id}"
        if role == "admin" and not admin_named and row.revoked_at is None:
            username, admin_named = "admin", True
        user_id = conn.execute(
            sa.insert(_users).values(username=username, role=role, created_at=row.created_at,
                                     # A user whose only key was revoked has no way in left.
                                     disabled_at=row.revoked_at)
            .returning(_users.c.id)
        ).scalar_one()
        conn.execute(sa.update(_keys).where(_keys.c.id == row.id).values(user_id=user_id, label=row.name or ""))

    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key("fk_api_keys_user_id_users", "users", ["user_id"], ["id"])
        batch.create_index("ix_api_keys_user_id", ["user_id"])
        batch.create_index("ix_api_keys_updated_at", ["updated_at"])
        batch.drop_column("name")
        batch.drop_column("role")

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("actor_user_id", sa.Integer(), nullable=True),
        sa.Column("actor_key_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
    )
    op.create_index("ix_audit_log_created_at", "audit_log", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_created_at", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("name", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("role", sa.String(20), nullable=False, server_default="user"))
    conn = op.get_bind()
    for key_id, role in conn.execute(sa.select(_keys.c.id, _users.c.role)
                                     .join(_users, _users.c.id == _keys.c.user_id)).all():
        conn.execute(sa.update(_keys).where(_keys.c.id == key_id).values(role="admin" if role == "admin" else "user"))
    conn.execute(sa.update(_keys).values(name=_keys.c.label))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_updated_at")
        batch.drop_index("ix_api_keys_user_id")
        batch.drop_constraint("fk_api_keys_user_id_users", type_="foreignkey")
        batch.drop_column("updated_at")
        batch.drop_column("expires_at")
        batch.drop_column("allowed_models")
        batch.drop_column("label")
        batch.drop_column("user_id")
    op.drop_index("ix_users_updated_at", table_name="users")
    op.drop_table("users")
