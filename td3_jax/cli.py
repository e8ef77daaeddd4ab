"""The `td3-jax` command line: one subcommand per module, imported on use.

Each subcommand module defines ``configure(parser)`` and ``run(args) -> int``.
Importing lazily keeps `td3-jax --help` fast and lets a subcommand's heavy
dependencies (carla, torch, tensorboard) stay out of the others.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

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
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        print(f"td3-jax {name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from td3_jax.cli import main as package_main  # the package's UserError, not __main__'s

    sys.exit(package_main())
