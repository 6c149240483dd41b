"""Per-file index for ls/find: file versions as intervals of snapshots per series; rewrite audit.

Revision ID: 0005
Revises: 0004

The index is a cache of the snapshot trees (rebuilt by ``drtool catalog rebuild`` and
filled in lazily for snapshots that predate it), so the upgrade creates empty tables;
``rewrites`` is the audit trail of ``drtool rewrite`` (history, kept by rebuilds).
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "file_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo_id", sa.String(64), nullable=False),
        sa.Column("series", sa.String(255), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("basename", sa.Text, nullable=False),
        sa.Column("type", sa.String(16)),
        sa.Column("size", sa.BigInteger, default=0),
        sa.Column("mtime_ns", sa.BigInteger, default=0),
        sa.Column("mode", sa.Integer, default=0),
        sa.Column("content", sa.String(64), default=""),
        sa.Column("hash", sa.String(160), nullable=True),
        sa.Column("first_seq", sa.Integer, nullable=False),
        sa.Column("end_seq", sa.Integer, nullable=True),
    )
    op.create_index("ix_file_versions_path", "file_versions", ["repo_id", "series", "path", "end_seq"])
    op.create_index("ix_file_versions_basename", "file_versions", ["repo_id", "basename"])
    # partial: most sources record no hash, and an index entry per row slowed the first insert
    op.create_index("ix_file_versions_hash", "file_versions", ["repo_id", "hash"],
                    sqlite_where=sa.text("hash IS NOT NULL"), postgresql_where=sa.text("hash IS NOT NULL"))
    op.create_table(
        "file_index_snapshots",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("snapshot_id", sa.String(64), primary_key=True),
        sa.Column("series", sa.String(255), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("tree", sa.String(64)),
        sa.Column("time", sa.DateTime(timezone=True)),
    )
    # unique: two backups of one series indexing at once cannot both take the next position
    op.create_index("ix_file_index_snapshots_series", "file_index_snapshots", ["repo_id", "series", "seq"],
                    unique=True)
    op.create_table(
        "rewrites",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo_id", sa.String(64), index=True),
        sa.Column("time", sa.DateTime(timezone=True)),
        sa.Column("host", sa.String(255)),
        sa.Column("command", sa.Text, default=""),
        sa.Column("reason", sa.Text, default=""),
        sa.Column("excluded", sa.Text, default="[]"),
        sa.Column("original_id", sa.String(64)),
        sa.Column("new_id", sa.String(64), nullable=True),
        sa.Column("outcome", sa.Text, default=""),
    )


def downgrade() -> None:
    op.drop_table("rewrites")
    op.drop_index("ix_file_index_snapshots_series", "file_index_snapshots")
    op.drop_table("file_index_snapshots")
    op.drop_index("ix_file_versions_hash", "file_versions")
    op.drop_index("ix_file_versions_basename", "file_versions")
    op.drop_index("ix_file_versions_path", "file_versions")
    op.drop_table("file_versions")
