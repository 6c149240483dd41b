"""Archived WAL / binlog segments per source (point-in-time recovery windows).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_segments",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("object_id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(255)),
        sa.Column("kind", sa.String(16)),
        sa.Column("name", sa.String(255)),
        sa.Column("timeline", sa.Integer, nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.Column("first_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("start_pos", sa.String(64), nullable=True),
        sa.Column("end_pos", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger, default=0),
        sa.Column("archived_at", sa.DateTime(timezone=True)),
        sa.Column("extra", sa.Text, default="{}"),
    )
    op.create_index("ix_log_segments_source", "log_segments", ["repo_id", "source", "kind", "seq"])


def downgrade() -> None:
    op.drop_index("ix_log_segments_source", "log_segments")
    op.drop_table("log_segments")
