"""Browsing and single-file recovery: the per-file index (find), ls, diff and dump."""
