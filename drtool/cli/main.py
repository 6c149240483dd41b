"""``drtool`` entry point: global options, error → exit code translation."""
from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from drtool import __version__
from drtool.cli.context import CliState, tune_malloc_for_backup
from drtool.errors import EXIT_ERROR, EXIT_USAGE, DrtoolError


def _parse_lock_wait(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float:
    if not value:
        return 0.0
    from drtool.api.settings import parse_duration
    try:
        return parse_duration(value).total_seconds()
    except DrtoolError as exc:
        raise click.BadParameter(str(exc)) from None


class LazyGroup(click.Group):
    """Imports only the module of the command being run.

    Each command module pulls in its use cases (and SQLAlchemy, boto3, ...);
    importing all of them cost ~0.1 s on every run, which a nightly
    ``wal-push`` per WAL segment or a small backup pays for nothing.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        if ctx.resilient_parsing:  # shell completion: the names alone; get_command imports the few that match
            return sorted(COMMAND_MODULE_OF)
        _register()
        return super().list_commands(ctx)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple:  # type: ignore[type-arg]
        """Start deriving the repository key before the command's modules are imported.

        A backup pins malloc's settings first: the first thread to allocate gets
        an arena of its own, and with the key derived on one before the backup
        limited malloc to one arena, every later thread shared two arenas, each
        keeping its own free space (night 1 of the bench: ~10 MiB of peak RSS).
        """
        if args and args[0] == "backup":
            tune_malloc_for_backup()
        if args and args[0] not in NO_EARLY_UNLOCK and not HELP_FLAGS.intersection(args) \
                and not ctx.resilient_parsing and not _async_wal_push(_state_for(ctx), args):
            # (resilient parsing: shell completion, which must never derive a key or prompt)
            _state_for(ctx).start_unlock()
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULE_OF.get(cmd_name)
        if module_name is None:
            _register()  # unknown: load everything so click can suggest a close match
        else:
            _register_module(module_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", "repo", metavar="URL", envvar=None,
              help="Repository path, file:// or s3://bucket/prefix (or DRTOOL_REPOSITORY).")
@click.option("--config", "config", metavar="FILE", help="TOML config file (or DRTOOL_CONFIG).")
@click.option("-v", "--verbose", count=True, help="More output; -vv for debug logs.")
@click.option("--lock-wait", metavar="DURATION", callback=_parse_lock_wait,
              help="Wait this long for a conflicting lock (e.g. 10m).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              help="Log lines on stderr as text or JSON (for journald).")
@click.option("--no-lock", is_flag=True,
              help="Restore/check without a repository lock (read-only repositories are detected anyway).")
@click.option("--limit-upload", metavar="RATE",
              help="S3: at most this many bytes per second up (e.g. 20MiB; or [s3] limit_upload).")
@click.option("--limit-download", metavar="RATE",
              help="S3: at most this many bytes per second down (e.g. 50MB; or [s3] limit_download).")
@click.version_option(__version__, prog_name="drtool")
@click.pass_context
def cli(ctx: click.Context, repo: str | None, config: str | None, verbose: int, lock_wait: float,
        log_format: str, no_lock: bool, limit_upload: str | None, limit_download: str | None) -> None:
    """drtool: encrypted, deduplicated disaster-recovery backups you can restore."""
    from drtool.cli.entry import allow_interrupts
    allow_interrupts()  # the command's modules are imported: start-up is over
    from drtool.cli.logs import setup_logging
    setup_logging(verbose, log_format)
    _state_for(ctx).command = ctx.invoked_subcommand


def _async_wal_push(state: CliState, args: list[str]) -> bool:
    """``pg wal-push`` with asynchronous archiving derives no key: the worker holds it."""
    if args[:2] != ["pg", "wal-push"]:
        return False
    if "--async" in args:
        return True
    source = os.environ.get("DRTOOL_SOURCE")
    for i, arg in enumerate(args):
        if arg == "--source" and i + 1 < len(args):
            source = args[i + 1]
        elif arg.startswith("--source="):
            source = arg.split("=", 1)[1]
    try:
        table = state.settings.section("sources").get(source or "", {})
    except DrtoolError:
        return False
    return isinstance(table, dict) and bool(table.get("archive_async"))


def _state_for(ctx: click.Context) -> CliState:
    """The invocation's state, made from the global options on first need."""
    global _state
    if ctx.obj is None:
        params = ctx.params
        ctx.obj = _state = CliState(params.get("repo"), params.get("config"), params.get("verbose", 0),
                                    params.get("lock_wait") or 0.0, no_lock=bool(params.get("no_lock")))
        _state.settings.override_s3(limit_upload=params.get("limit_upload"),
                                    limit_download=params.get("limit_download"))
    return ctx.obj


_state: CliState | None = None
NO_SESSION_COMMANDS = frozenset({"init"})
# No key derivation at start-up: ``find`` first tries the catalog without the key (browse/find.py).
NO_EARLY_UNLOCK = NO_SESSION_COMMANDS | {"find"}
HELP_FLAGS = frozenset({"-h", "--help"})
# Top-level command name -> its module in drtool/cli/commands/ (one per noun; a test keeps this true).
COMMAND_MODULE_OF = {
    "init": "init", "backup": "backup", "snapshots": "snapshots", "restore": "restore", "check": "check",
    "catalog": "catalog", "key": "key", "locks": "locks", "unlock": "locks",
    "pg": "pg", "mariadb": "mariadb", "forget": "forget", "prune": "prune", "status": "status",
    "metrics": "metrics", "rehearse": "rehearse", "rehearsals": "rehearse", "report": "rehearse",
    "copy": "copy", "repo": "repo",
    "ls": "ls", "find": "find", "diff": "diff", "dump": "dump", "mount": "mount", "rewrite": "rewrite",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMAND_MODULE_OF.values()))
_registered_modules: set[str] = set()


def _register_module(module_name: str) -> None:
    if module_name in _registered_modules:
        return
    import importlib
    importlib.import_module(f"drtool.cli.commands.{module_name}").register(cli)
    _registered_modules.add(module_name)


def _register() -> None:
    for module_name in COMMAND_MODULES:
        _register_module(module_name)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code.  Never lets a traceback reach the user."""
    global _state
    _state = None
    from drtool.cli import context
    context.COMMAND_LINE[:] = sys.argv[1:] if argv is None else list(argv)
    _escape_unprintable_output()
    code, message, error = _invoke(argv)
    if code != 0 and _is_restore_command(argv) and not getattr(error, "definitely_absent", False):
        code = FETCH_FAILED  # PostgreSQL reads 1..125 as "not archived" and would end recovery early
    if _state is not None:
        state, _state = _state, None
        try:
            state.finish(getattr(state, "command", None), code, message)
        except Exception as exc:  # noqa: BLE001 - history and notification never change the outcome
            if not (_out_of_memory(exc) and code != 0):  # a failed run out of memory has said so once
                click.echo(f"drtool: warning: could not record or announce this run: "
                           f"{_describe_internal(exc)}", err=True)
    return code


def _out_of_memory(exc: BaseException) -> bool:
    """A limit on memory shows as MemoryError, or as an import that cannot map a library."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    if isinstance(exc, RuntimeError):
        return "can't start new thread" in text
    return isinstance(exc, (ImportError, OSError)) and (
        "failed to map segment" in text or "Cannot allocate memory" in text)


def _start_up_ran_out_of_memory() -> bool:
    """The key thread ran out of memory: what the command's thread then meets (a half-imported
    module, say) is that, not a bug."""
    error = getattr(_state, "_unlocked", {}).get("error") if _state is not None else None
    return error is not None and _out_of_memory(error)


def _describe_internal(exc: BaseException) -> str:
    if _out_of_memory(exc):
        return ("not enough memory (the process's memory limit was reached; "
                "raise ulimit -v / the unit's MemoryMax)")
    return f"{type(exc).__name__}: {exc}"


FETCH_FAILED = 126


def _escape_unprintable_output() -> None:
    """A name that cannot be encoded (not UTF-8, surrogate escapes) is printed escaped, never fatal.

    Names are escaped where they are shown (``snapshot.names.display``);
    this is the net under everything else that prints (log lines, messages).
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError, AttributeError):
                pass


def _is_restore_command(argv: list[str] | None) -> bool:
    """``drtool … pg wal-fetch …``: the one command whose low exit codes PostgreSQL trusts."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    return any(a == "pg" and b == "wal-fetch" for a, b in zip(words, words[1:]))


def _invoke(argv: list[str] | None) -> tuple[int, str, BaseException | None]:
    verbose = argv is not None and "-v" in argv
    try:
        result = cli.main(args=argv, prog_name="drtool", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code), "", None
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            click.echo("drtool: interrupted; nothing half-written was committed", err=True)
            return 130, "interrupted", exc
        click.echo("drtool: aborted", err=True)
        return 130, "aborted", exc
    except click.ClickException as exc:
        exc.show()
        code = EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
        return code, exc.format_message(), exc
    except DrtoolError as exc:
        click.echo(f"drtool: error: {exc.one_line()}", err=True)
        return exc.exit_code, exc.one_line(), exc
    except KeyboardInterrupt as exc:
        click.echo("drtool: interrupted; nothing half-written was committed", err=True)
        return 130, "interrupted", exc
    except Exception as exc:  # last resort: one line, traceback only with -vv
        if verbose or logging.getLogger("drtool").isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        if _out_of_memory(exc) or _start_up_ran_out_of_memory():
            click.echo(f"drtool: error: {_describe_internal(MemoryError())}", err=True)
            return EXIT_ERROR, "not enough memory", exc
        click.echo(f"drtool: internal error: {type(exc).__name__}: {exc} "
                   f"(re-run with -vv for details and report it)", err=True)
        return EXIT_ERROR, f"internal error: {type(exc).__name__}", exc
    return (result if isinstance(result, int) else 0), "", None


def run() -> None:
    from drtool.cli.entry import run as entry_run
    entry_run()
