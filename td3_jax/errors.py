"""Bad user input, and the checks of paths that a command writes to.

Every layer (config, envs, the training loop, diagnose, bench) may raise
`UserError`; the command line (`td3_jax.cli`) prints it as one line and exits
with code 2. This module imports nothing of td3_jax, so it sits at the bottom.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


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


def os_errno(error: BaseException) -> int | None:
    """The OS error number behind an exception, also in tensorstore's form (`[os_error_code='28']`)."""
    if getattr(error, "errno", None) is not None:
        return error.errno
    found = re.search(r"os_error_code='(\d+)'", str(error))
    return int(found.group(1)) if found else None


def brief(error: BaseException) -> str:
    """An exception's type and first line, capped, for one-line messages; an OS error by its errno text."""
    code = os_errno(error)
    if code is not None:
        return f"{os.strerror(code)} (errno {code})"
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
