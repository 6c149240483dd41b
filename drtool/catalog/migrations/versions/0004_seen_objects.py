"""Memory of every snapshot and index object the catalog saw committed (rollback detection).

Revision ID: 0004
Revises: 0003

Seeded from the cached snapshots and index objects: a catalog that cached
an object has seen it committed.
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seen = op.create_table(
        "seen_objects",
        sa.Column("repo_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("object_id", sa.String(64), primary_key=True),
        sa.Column("label", sa.Text, default=""),
        sa.Column("first_seen", sa.DateTime(timezone=True)),
        sa.Column("state", sa.String(16), default="present"),
        sa.Column("state_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text, default=""),
    )
    op.create_index("ix_seen_objects_state", "seen_objects", ["repo_id", "state"])
    conn = op.get_bind()
    now = datetime.now(timezone.utc)
    snapshots = conn.execute(sa.text("SELECT repo_id, id, name, time FROM snapshots")).all()
    indexes = conn.execute(sa.text("SELECT repo_id, index_id FROM index_files")).all()
    rows = [{"repo_id": r[0], "kind": "snapshot", "object_id": r[1], "label": f"{r[2]}, {r[3]}",
             "first_seen": now, "state": "present", "state_time": None, "note": ""} for r in snapshots]
    rows += [{"repo_id": r[0], "kind": "index", "object_id": r[1], "label": f"index/{r[1]}",
              "first_seen": now, "state": "present", "state_time": None, "note": ""} for r in indexes]
    if rows:
        op.bulk_insert(seen, rows)


def downgrade() -> None:
    op.drop_index("ix_seen_objects_state", "seen_objects")
    op.drop_table("seen_objects")
