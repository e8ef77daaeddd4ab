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
import platform
import signal
import sys
import traceback

from td3_jax.errors import UserError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("td3_jax.training.train", "train TD3 from a YAML config (embedded simulator by default)"),
    "eval": ("td3_jax.training.evaluate", "evaluate a checkpoint's deterministic policy"),
    "diagnose": ("td3_jax.diagnose.diagnose", "is this TD3 run healthy? (reads TensorBoard event files)"),
    "bench": ("td3_jax.bench.bench", "measure update, act, replay and simulator speed"),
    "env-preview": ("td3_jax.envs.preview", "write PNGs of the camera view and the route"),
}


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


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def wants_huge_pages(environ: dict[str, str], libc: tuple[str, str], thp_mode: str) -> bool:
    """Whether relaunching with `HUGE_PAGES_TUNABLE` would change how this process's memory is backed.

    Only glibc 2.35 and newer read the tunable, and only in the kernel's "madvise" mode does it decide
    anything ("always" backs large blocks with huge pages anyway, "never" refuses them). A
    GLIBC_TUNABLES that already names `glibc.malloc.hugetlb`, 0 included, is the user's choice.
    """
    name, version = libc
    try:
        new_enough = name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False
    return new_enough and "[madvise]" in thp_mode and "glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", "")


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode line ("always [madvise] never"), or "" where there is none."""
    try:
        with open(THP_MODE_FILE) as handle:
            return handle.read()
    except OSError:
        return ""


def relaunch_with_huge_pages() -> None:
    """Re-executes this command, same process and arguments, with glibc's malloc asking for huge pages.

    XLA allocates an update's temporaries afresh on every call (233 MB at batch 256); glibc maps
    blocks that large from the kernel each time and faults them in 4 KiB at a time; with huge pages
    the update ran 1.1-1.2x faster on the 2-core VM of docs/benchmarks.md. glibc reads its tunables
    only at start-up, hence the exec.
    """
    if not (sys.executable and sys.orig_argv):  # an embedded interpreter: nothing to re-execute
        return
    if not wants_huge_pages(dict(os.environ), platform.libc_ver(), thp_mode()):
        return
    tunables = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES", ""), HUGE_PAGES_TUNABLE)))
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": tunables})
    except OSError:  # the interpreter cannot be re-executed here: run as it is
        return


def entry() -> int:
    """The `td3-jax` console script and `python -m td3_jax.cli`: `main` in a process backed by huge pages."""
    relaunch_with_huge_pages()
    return main()


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
    sys.exit(entry())
