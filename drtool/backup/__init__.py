"""Backup: file trees, command output and configured sources into snapshots.

``run`` is the use case (paths, a command's stdout, any stream), ``treewalk`` and ``pipeline``
its data path (walk, chunk, dedup, compress, encrypt, pack), ``streams`` runs a dump program
into a stream snapshot, and ``configured`` backs up ``[sources.NAME]`` tables, taking database
engines from its caller (so this package never depends on ``drtool.databases``).
"""
