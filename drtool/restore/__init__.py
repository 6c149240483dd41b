"""Restore: snapshot trees back onto a file system.

``run`` is the use case (plan, restore, resume, partial restores) and ``groups`` its data path
(blob references planned per compression group, each group read and decrypted once, parallel
writes).  Database point-in-time restores live in ``drtool.databases``.
"""
