"""``drtool find PATTERN...``: which versions of a file exist, and in which snapshots."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option


@click.command("find")
@click.argument("patterns", nargs=-1)
@click.option("--path", "path", metavar="PATH", help="Only this path and what is below it.")
@click.option("--name", "names", multiple=True, metavar="NAME", help="Only these snapshot series.")
@click.option("--host", metavar="HOST", help="Only snapshots taken on HOST.")
@click.option("--since", metavar="TIME", help="Only snapshots at or after TIME (ISO 8601, -7d, ...).")
@click.option("--until", metavar="TIME", help="Only snapshots at or before TIME.")
@click.option("--min-size", metavar="SIZE", help="Files of at least SIZE (e.g. 10k, 5M).")
@click.option("--max-size", metavar="SIZE", help="Files of at most SIZE.")
@click.option("--newer", metavar="TIME", help="Files modified at or after TIME.")
@click.option("--older", metavar="TIME", help="Files modified at or before TIME.")
@click.option("--hash", "digest", metavar="HEX", help="Content hash (sha256:HEX, sha1:HEX, an object's etag:HEX, or a prefix).")
@json_option
@pass_state
def find(state: CliState, patterns: tuple[str, ...], path: str | None, names: tuple[str, ...],
         host: str | None, since: str | None, until: str | None, min_size: str | None,
         max_size: str | None, newer: str | None, older: str | None, digest: str | None,
         as_json: bool) -> None:
    """Find files by name glob (PATTERN matches the base name; with a '/' the whole path) across
    snapshots; each version is listed once with the first and last snapshot holding it."""
    conditions = dict(path=path, names=list(names), host=host, since=since, until=until, min_size=min_size,
                      max_size=max_size, newer=newer, older=older, hash=digest)
    # An SQLite catalog that is already current answers without the key (browse/find.py); else the
    # key is derived now (main.NO_EARLY_UNLOCK) while the catalog layer is imported, and the catalog is
    # opened, synced and indexed.
    versions = api.find_files_without_key(state.repository(), list(patterns), catalog=state.settings.catalog,
                                          backend_options=state.settings.backend_options, **conditions)
    if versions is None:
        state.start_unlock()
        versions = api.find_files(state.session(), list(patterns), **conditions)
    if as_json:
        emit([v.as_dict() for v in versions], True)
        return
    for version in versions:
        click.echo(version.text())
    click.echo(f"{len(versions)} version(s) found")


def register(cli: click.Group) -> None:
    cli.add_command(find)
