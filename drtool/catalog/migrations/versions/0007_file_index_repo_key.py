"""The file index keyed by a short integer per repository instead of its ``repo_id``.

Revision ID: 0007
Revises: 0006

``file_versions`` holds a row per file version, and each row had three index
entries; the row and every entry started with the repository id (32-64
characters), ~60 bytes of each.  A first backup of 1,000,000 files wrote a
414 MB catalog and spent ~25 % more CPU inserting it than with a small
integer (196 MB).  ``file_index_repos`` maps each repository id to its key.

The index is a cache, but rebuilding it means reading every snapshot tree
back, so the upgrade copies the rows (same version ids) into the new table
instead of dropping them.  ``file_index_snapshots`` (a row per snapshot)
keeps ``repo_id``.
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = ("series", "path", "basename", "type", "size", "mtime_ns", "mode", "content", "hash",
           "first_seq", "end_seq")
INDEXES = ("ix_file_versions_path", "ix_file_versions_basename", "ix_file_versions_hash")


def _versions_table(name: str, owner: str, owner_type: sa.types.TypeEngine) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(owner, owner_type, nullable=False),
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


def _swap(owner: str, owner_type: sa.types.TypeEngine, select_owner: str, join: str) -> None:
    """Copy ``file_versions`` into a new table whose owner column is ``owner``, ids kept, then
    put the new table in its place with the same three indexes."""
    _versions_table("file_versions_new", owner, owner_type)
    columns = ", ".join(COLUMNS)
    from_columns = ", ".join(f"v.{c}" for c in COLUMNS)
    op.execute(f"INSERT INTO file_versions_new (id, {owner}, {columns}) "
               f"SELECT v.id, {select_owner}, {from_columns} FROM file_versions v {join}")
    for name in INDEXES:
        op.drop_index(name, "file_versions")
    op.drop_table("file_versions")
    op.rename_table("file_versions_new", "file_versions")
    if op.get_bind().dialect.name == "postgresql":  # names as a table created as file_versions has
        op.execute("ALTER INDEX file_versions_new_pkey RENAME TO file_versions_pkey")
        op.execute("ALTER SEQUENCE file_versions_new_id_seq RENAME TO file_versions_id_seq")
        op.execute("SELECT setval('file_versions_id_seq', COALESCE((SELECT MAX(id) FROM file_versions), 0) + 1, "
                   "false)")
    op.create_index("ix_file_versions_path", "file_versions", [owner, "series", "path", "end_seq"])
    op.create_index("ix_file_versions_basename", "file_versions", [owner, "basename"])
    # partial: most sources record no hash (as in 0005)
    op.create_index("ix_file_versions_hash", "file_versions", [owner, "hash"],
                    sqlite_where=sa.text("hash IS NOT NULL"), postgresql_where=sa.text("hash IS NOT NULL"))


def upgrade() -> None:
    op.create_table(
        "file_index_repos",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo_id", sa.String(64), nullable=False, unique=True),
    )
    op.execute("INSERT INTO file_index_repos (repo_id) SELECT DISTINCT repo_id FROM file_versions "
               "ORDER BY repo_id")
    _swap("repo_key", sa.Integer(), "k.id", "JOIN file_index_repos k ON k.repo_id = v.repo_id")


def downgrade() -> None:
    _swap("repo_id", sa.String(64), "k.repo_id", "JOIN file_index_repos k ON k.id = v.repo_key")
    op.drop_table("file_index_repos")
