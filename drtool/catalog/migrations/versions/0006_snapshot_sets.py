"""Snapshot sets of sharded sources, and the shard leases workers claim.

Revision ID: 0006
Revises: 0005

Coordination rows for ``shards = N`` sources (docs/scale.md): which set is
being made, and which worker holds which shard until when.  The partial
unique index keeps one open set per source however many hosts start at once.
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshot_sets",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("shards", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True)),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("host", sa.String(255)),
        sa.Column("note", sa.Text, default=""),
    )
    op.create_index("ix_snapshot_sets_open", "snapshot_sets", ["repo_id", "source"], unique=True,
                    sqlite_where=sa.text("state = 'open'"), postgresql_where=sa.text("state = 'open'"))
    op.create_table(
        "shard_leases",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("set_id", sa.String(64), primary_key=True),
        sa.Column("shard", sa.Integer, primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("token", sa.String(64), nullable=True),
        sa.Column("expires", sa.Float, nullable=True),
        sa.Column("snapshot_id", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, default=0),
        sa.Column("errors", sa.Integer, default=0),
        sa.Column("error", sa.Text, default=""),
    )


def downgrade() -> None:
    op.drop_table("shard_leases")
    op.drop_index("ix_snapshot_sets_open", "snapshot_sets")
    op.drop_table("snapshot_sets")
