"""Rehearsal history: one row per drill and one per restored step.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rehearsals",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("runbook", sa.String(255), index=True),
        sa.Column("host", sa.String(255)),
        sa.Column("started", sa.DateTime(timezone=True), index=True),
        sa.Column("finished", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16)),
        sa.Column("rto_seconds", sa.Float, nullable=True),
        sa.Column("rpo_seconds", sa.Float, nullable=True),
        sa.Column("document", sa.Text),
    )
    op.create_table(
        "rehearsal_steps",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("rehearsal_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(255)),
        sa.Column("source", sa.String(255), index=True),
        sa.Column("snapshot_id", sa.String(64), nullable=True),
        sa.Column("started", sa.DateTime(timezone=True), index=True),
        sa.Column("status", sa.String(16)),
        sa.Column("rto_seconds", sa.Float, nullable=True),
        sa.Column("rpo_seconds", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("rehearsal_steps")
    op.drop_table("rehearsals")
