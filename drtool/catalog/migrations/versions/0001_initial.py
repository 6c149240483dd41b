"""Initial catalog schema: snapshots, index cache, run history.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), index=True),
        sa.Column("host", sa.String(255)),
        sa.Column("time", sa.DateTime(timezone=True), index=True),
        sa.Column("kind", sa.String(32)),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("tree", sa.String(64)),
        sa.Column("size", sa.BigInteger, default=0),
        sa.Column("files", sa.BigInteger, default=0),
        sa.Column("bytes_added", sa.BigInteger, default=0),
        sa.Column("manifest", sa.Text),
    )
    op.create_table(
        "index_files",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("index_id", sa.String(64), primary_key=True),
    )
    op.create_table(
        "index_packs",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("index_id", sa.String(64), primary_key=True),
        sa.Column("pack_id", sa.String(64), primary_key=True),
        sa.Column("entries", sa.LargeBinary),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo_id", sa.String(64), index=True),
        sa.Column("command", sa.String(32)),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("host", sa.String(255)),
        sa.Column("started", sa.DateTime(timezone=True)),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16)),
        sa.Column("exit_code", sa.Integer, default=0),
        sa.Column("snapshot_id", sa.String(64), nullable=True),
        sa.Column("bytes_added", sa.BigInteger, default=0),
        sa.Column("message", sa.Text, default=""),
        sa.Column("stats", sa.Text, default="{}"),
    )
    op.create_index("ix_runs_repo_command", "runs", ["repo_id", "command", "started"])


def downgrade() -> None:
    op.drop_index("ix_runs_repo_command", "runs")
    for table in ("runs", "index_packs", "index_files", "snapshots"):
        op.drop_table(table)
