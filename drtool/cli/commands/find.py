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
@click.option("--hash", "digest", metavar="HEX", help="Content hash (sha256:HEX, sha1:HEX or a prefix).")
@json_option
@pass_state
def find(state: CliState, patterns: tuple[str, ...], path: str | None, names: tuple[str, ...],
         host: str | None, since: str | None, until: str | None, min_size: str | None,
         max_size: str | None, newer: str | None, older: str | None, digest: str | None,
         as_json: bool) -> None:
    """Find files by name glob (PATTERN matches the base name; with a '/' the whole path) across
    snapshots; each version is listed once with the first and last snapshot holding it."""
    # deferred: an SQLite catalog that is current is read without opening it (browse/find.py)
    versions = api.find_files(state.session(defer_catalog=True), list(patterns), path=path, names=list(names), host=host,
                              since=since, until=until, min_size=min_size, max_size=max_size,
                              newer=newer, older=older, hash=digest)
    if as_json:
        emit([v.as_dict() for v in versions], True)
        return
    for version in versions:
        click.echo(version.text())
    click.echo(f"{len(versions)} version(s) found")


def register(cli: click.Group) -> None:
    cli.add_command(find)
