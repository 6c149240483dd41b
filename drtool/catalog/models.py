"""Catalog tables.  Every row carries ``repo_id`` so one shared catalog (for
example on PostgreSQL) can serve many repositories and many hosts.

Everything here except ``runs`` and rehearsal history is a cache of the
repository and can be rebuilt from it with ``drtool catalog rebuild``.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SnapshotRow(Base):
    __tablename__ = "snapshots"
    repo_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    host: Mapped[str] = mapped_column(String(255))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    parent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tree: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_added: Mapped[int] = mapped_column(BigInteger, default=0)
    manifest: Mapped[str] = mapped_column(Text)


class IndexFileRow(Base):
    __tablename__ = "index_files"
    repo_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    index_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class IndexPackRow(Base):
    """One pack's trailer entries, packed binary: far smaller than a row per blob."""

    __tablename__ = "index_packs"
    repo_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    index_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    entries: Mapped[bytes] = mapped_column(LargeBinary)


class RunRow(Base):
    """History of commands (backup, restore, check, prune): not rebuildable."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repo_id: Mapped[str] = mapped_column(String(64), index=True)
    command: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    host: Mapped[str] = mapped_column(String(255))
    started: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int] = mapped_column(Integer, default=0)
    snapshot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bytes_added: Mapped[int] = mapped_column(BigInteger, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    stats: Mapped[str] = mapped_column(Text, default="{}")


Index("ix_runs_repo_command", RunRow.repo_id, RunRow.command, RunRow.started)
