"""Placeholder: commands of this area are registered here."""
from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """No commands yet."""
