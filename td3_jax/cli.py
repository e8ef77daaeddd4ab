"""The `td3-jax` command line: one subcommand per module, imported on use.

Each subcommand module defines ``configure(parser)`` and ``run(args) -> int``.
Importing lazily keeps `td3-jax --help` fast and lets a subcommand's heavy
dependencies (carla, torch, tensorboard) stay out of the others.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("td3_jax.train", "train TD3 from a YAML config (embedded simulator by default)"),
    "eval": ("td3_jax.evaluate", "evaluate a checkpoint's deterministic policy"),
    "diagnose": ("td3_jax.diagnose", "is this TD3 run healthy? (reads TensorBoard event files)"),
    "bench": ("td3_jax.bench", "measure update, act, replay and simulator speed"),
    "env-preview": ("td3_jax.envs.preview", "write PNGs of the camera view and the route"),
}


class UserError(Exception):
    """Bad user input: printed as one line, exit code 2, no traceback."""


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Creates directory `path` (and its parents) if needed and checks that files can be written in it.

    Args:
      path: the directory.
      what: what it is for the message, e.g. "--run-dir".

    Raises:
      UserError: it cannot be created (a parent is a file, no permission, read-only disk) or written to.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Only a real write tells for sure (os.access misjudges root, ACLs and some mounts).
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        under_a_file = isinstance(error, (FileExistsError, NotADirectoryError))
        reason = "a part of it is a file" if under_a_file else error.strerror
        raise UserError(
            f"{what} {path} cannot be created or written to ({reason}); pick a writable directory"
        ) from None
    return path


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Checks, before any long work, that file `path` can be written: its folder exists and is writable.

    Nothing is created, so a refused run leaves no trace.

    Raises:
      UserError: the folder is missing or not writable, or `path` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name in it")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{what} {path}: its folder {folder} does not exist; create it first")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"{what} {path}: cannot write in {folder} ({error.strerror})") from None
    return path


def _drop_abandoned_checkpoint_reads() -> None:
    """Silences the echoes of a failed orbax read, which would follow its one-line error as tracebacks.

    orbax reads a checkpoint's arrays concurrently and closes its event loop as
    soon as one read fails. The other reads then finish on tensorstore threads
    and hit the closed loop ("Event loop is closed", via sys.unraisablehook),
    and their own failures are never retrieved (the asyncio logger). Both only
    repeat the failure already reported.
    """
    global _previous_unraisablehook
    if sys.unraisablehook is not _quiet_unraisablehook:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _quiet_unraisablehook
    asyncio_logger = logging.getLogger("asyncio")
    if _never_retrieved not in asyncio_logger.filters:
        asyncio_logger.addFilter(_never_retrieved)


_previous_unraisablehook = sys.unraisablehook


def _quiet_unraisablehook(unraisable) -> None:
    frames = traceback.extract_tb(unraisable.exc_traceback)
    if str(unraisable.exc_value) == "Event loop is closed" and any(f.name == "call_soon_threadsafe" for f in frames):
        return
    _previous_unraisablehook(unraisable)


def _never_retrieved(record: logging.LogRecord) -> bool:
    """False (drop) for asyncio's "exception was never retrieved" reports."""
    return "exception was never retrieved" not in str(record.msg)


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_text)
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _available()
    parser = argparse.ArgumentParser(prog="td3-jax", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in commands.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(commands)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module = importlib.import_module(commands[name][0])
    sub = argparse.ArgumentParser(prog=f"td3-jax {name}", description=commands[name][1])
    module.configure(sub)
    args = sub.parse_args(argv[1:])
    _drop_abandoned_checkpoint_reads()
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        print(f"td3-jax {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train handles SIGINT itself (it saves first); the others just stop
        print(f"td3-jax {name}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:  # e.g. `td3-jax diagnose RUN | head`: the reader has what it wanted
        # Python would report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    from td3_jax.cli import main as package_main  # the package's UserError, not __main__'s

    sys.exit(package_main())
