"""Checksums and fsyncs of the files of a checkpoint step directory. Plain file I/O, no orbax.

    write_manifest(step_directory)                     # after the step is complete
    verify(step_directory, hash_skipped=("replay",))   # True, False (no manifest), or raises CorruptFile

orbax keeps no checksums: a flipped byte in an array chunk restores as other
weights, and a garbled metadata file is often logged and skipped. The manifest
``CHECKSUMS.json`` lists each file's size and BLAKE2b digest, plus a digest of
that list, so a damaged manifest is caught too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "CHECKSUMS.json"
"""The manifest's file name inside a step directory."""
_CHUNK_BYTES = 1 << 20


class CorruptFile(Exception):
    """A file of a step directory differs from its manifest entry (or the manifest itself is damaged).

    Attributes:
      relative_path: the file, relative to the step directory.
      problem: what is wrong with it, a few words.
    """

    def __init__(self, relative_path: str, problem: str):
        super().__init__(f"{relative_path}: {problem}")
        self.relative_path = relative_path
        self.problem = problem


def fsync_path(path: Path) -> None:
    """fsyncs a file, or a directory where the platform allows it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        # Some platforms cannot fsync a directory; file data is synced regardless.
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsyncs every file and directory under `root`."""
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(directory, name))
        fsync_path(Path(directory))


def file_digest(path: Path) -> str:
    """BLAKE2b hex digest of a file's bytes, read in chunks."""
    digest = hashlib.blake2b()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _listing_digest(files: dict) -> str:
    return hashlib.blake2b(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(step_directory: Path) -> Path:
    """Writes the manifest of every other file under `step_directory` and fsyncs it; returns its path.

    Written to a temporary name and renamed, so a crash never leaves half a manifest.
    """
    files = {}
    for directory, _, names in os.walk(step_directory):
        for name in names:
            path = Path(directory, name)
            relative = path.relative_to(step_directory).as_posix()
            if relative != MANIFEST:
                files[relative] = {"size": path.stat().st_size, "blake2b": file_digest(path)}
    manifest = step_directory / MANIFEST
    partial = manifest.with_name(MANIFEST + ".partial")
    partial.write_text(json.dumps({"files": files, "listing_blake2b": _listing_digest(files)}, sort_keys=True))
    fsync_path(partial)
    os.replace(partial, manifest)
    return manifest


def verify(step_directory: Path, hash_skipped: tuple[str, ...] = ()) -> bool:
    """Checks the files of `step_directory` against its manifest.

    Every listed file must exist with its recorded size; all but those under
    the top-level folders `hash_skipped` (items the caller will not read) must
    also match their digest. Files not listed are ignored.

    Returns:
      True if verified, False if the directory has no manifest (written before manifests existed).

    Raises:
      CorruptFile: the first file that is missing, resized, altered or unreadable, or a damaged manifest.
    """
    try:
        recorded = json.loads((step_directory / MANIFEST).read_bytes())
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as error:
        raise CorruptFile(MANIFEST, f"unreadable ({type(error).__name__})") from error
    files = recorded.get("files") if isinstance(recorded, dict) else None
    if not isinstance(files, dict) or recorded.get("listing_blake2b") != _listing_digest(files):
        raise CorruptFile(MANIFEST, "its checksum does not match its contents")
    # Sizes first: a missing or cut file is found before any hashing.
    for relative, entry in sorted(files.items()):
        size = _size_or_none(step_directory / relative)
        if size is None:
            raise CorruptFile(relative, "missing")
        if size != entry["size"]:
            raise CorruptFile(relative, f"{size} bytes instead of {entry['size']}")
    for relative, entry in sorted(files.items()):
        if relative.split("/", 1)[0] in hash_skipped:
            continue
        try:
            digest = file_digest(step_directory / relative)
        except OSError as error:
            raise CorruptFile(relative, f"unreadable ({type(error).__name__}: {error.strerror})") from error
        if digest != entry["blake2b"]:
            raise CorruptFile(relative, "its checksum does not match")
    return True


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
