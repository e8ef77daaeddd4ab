"""Checkpoints that resume training exactly: train state, host state, config, replay. Host-side I/O.

    ckpt = Checkpointer("runs/x/checkpoints", max_to_keep=3, save_replay=True)
    ckpt.save(step, train_state=state, host_state=host, config=config, replay_state=buffer.state_dict())
    restored = ckpt.restore(abstract_train_state=init_state(...))   # latest committed step
    restored.train_state, restored.host_state, restored.config, restored.replay_state
    config = load_config("runs/x/checkpoints")                       # JSON only, no arrays

One checkpoint is one orbax step directory ``<directory>/<step>/`` with the
items ``train_state`` (orbax StandardSave of the `TD3State` arrays),
``replay`` (StandardSave of the replay buffer's NumPy arrays, optional),
``host``, ``config`` and ``meta`` (JSON). See docs/checkpoints.md.

Exactness. Every array is stored with its dtype and bytes; the train state is
restored against an abstract `TD3State`, so optax NamedTuple states come back
typed and the static `config` field comes from the caller. JSON parts must
survive a JSON round trip unchanged (types included): `save` refuses tuples,
NumPy scalars or non-string dict keys instead of silently returning lists,
floats or string keys. Zero-size arrays (orbax refuses them) are not
written; their shapes and dtypes go into ``meta`` and come back as zeros.

Atomicity. orbax (0.12.x, local filesystems) writes a step into
``<step>.orbax-checkpoint-tmp``, writes ``commit_success.txt`` into it and
renames it to ``<step>``. Here every file is also fsynced before that rename
and the parent directory after it, so a committed step is durable. A step
counts as committed only if its directory has ``commit_success.txt``; temporary
directories and step directories without the marker are ignored by
`latest_step` and `restore`, so an interrupted save leaves the previous
checkpoint in charge. A save that raises first waits for orbax's writes
still in flight, then deletes its leftovers, so it raises its own error and the
same step can be saved again.

Integrity. Right after the rename, ``CHECKSUMS.json`` records the size and
BLAKE2b digest of every other file of the step (`checkpoint.integrity`);
`restore` and `read_config` check them first. Steps without it still load.

Errors. Problems with the checkpoint itself (missing, uncommitted, another
format, an architecture that does not match the abstract target, unreadable
or altered files) raise `CheckpointError`, one line naming the path, the problem and
what to do. Anything else propagates unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.path import atomicity

from td3_jax.checkpoint import contents
from td3_jax.checkpoint import integrity
from td3_jax.core.td3 import TD3State
from td3_jax.errors import UserError, brief, os_errno

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout; bumped when it changes."""
COMMIT_MARKER = "commit_success.txt"
"""File orbax writes into a step directory just before committing it."""

_TRAIN_STATE, _REPLAY, _HOST, _CONFIG, _META = "train_state", "replay", "host", "config", "meta"
_FALLBACK = "move that step directory away to resume from the previous checkpoint"
_LOG = logging.getLogger(__name__)
_UNVERIFIED_WARNED: set[Path] = set()  # step directories without checksums, warned about once (eval reads twice)
_FAILED_SAVE_WAIT_S = 60.0
"""How long a failed save waits for orbax's writes still in flight before giving up on cleaning up."""


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the requested run."""


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns.

    Attributes:
      step: the step that was restored.
      train_state: `TD3State` with the abstract target's structure and config.
      host_state: the JSON dict passed to `save` as `host_state`.
      config: the resolved run config passed to `save` as `config`.
      replay_state: the replay `state_dict` (NumPy arrays and JSON scalars), or
        None when the checkpoint holds no replay or `with_replay` was False.
    """

    step: int
    train_state: TD3State
    host_state: dict
    config: dict
    replay_state: dict | None


class _DurableRenamePath(atomicity.AtomicRenameTemporaryPath):
    """orbax's tmp-directory-then-rename commit, with the data fsynced before the rename and checksummed after."""

    async def finalize(self, *args, **kwargs):
        await asyncio.to_thread(integrity.fsync_tree, Path(self.get()))
        await super().finalize(*args, **kwargs)
        final = Path(self.get_final())
        # Items are finalized into their step's temporary directory, the step itself into the checkpoints
        # directory; after its rename it holds orbax's last writes (marker, commit time in _CHECKPOINT_METADATA).
        if atomicity.TMP_DIR_SUFFIX not in final.parent.name:
            await asyncio.to_thread(integrity.write_manifest, final)
        for path in (final / COMMIT_MARKER, final, final.parent):
            await asyncio.to_thread(integrity.fsync_path, path)


def _quiet_orbax_logging() -> None:
    """orbax logs every save and restore at INFO through absl; keep warnings and errors."""
    absl_logger = logging.getLogger("absl")
    if absl_logger.getEffectiveLevel() < logging.WARNING:
        absl_logger.setLevel(logging.WARNING)


@contextlib.contextmanager
def _dropping_absl_errors(fragment: str):
    """While the block runs, drops absl ERROR records whose message template contains `fragment`."""
    def keep(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or fragment not in str(record.msg)

    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(keep)
    try:
        yield
    finally:
        absl_logger.removeFilter(keep)


class Checkpointer:
    """Keep-last-N checkpoints of one training run in one directory. Host-side I/O.

    Args:
      directory: the run's checkpoint directory (one subdirectory per step).
      max_to_keep: committed checkpoints to keep; older ones are deleted after
        each save. None keeps all.
      save_replay: whether `save` stores the replay state it is given.
      read_only: open an existing directory for restoring only: nothing is
        created or deleted and `save` raises.

    Raises:
      CheckpointError: `read_only` and the directory does not exist.
      ValueError: max_to_keep < 1.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_replay: bool = True,
        read_only: bool = False,
    ):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.save_replay = save_replay
        self.read_only = read_only
        if read_only and not self.directory.is_dir():
            raise CheckpointError(
                f"checkpoint directory {directory} does not exist; pass the checkpoints directory of a run "
                "(e.g. runs/NAME/checkpoints)"
            )
        _quiet_orbax_logging()
        handlers = {
            _TRAIN_STATE: ocp.StandardCheckpointHandler(),
            _REPLAY: ocp.StandardCheckpointHandler(),
            _HOST: ocp.JsonCheckpointHandler(),
            _CONFIG: ocp.JsonCheckpointHandler(),
            _META: ocp.JsonCheckpointHandler(),
        }
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            enable_async_checkpointing=False,
            temporary_path_class=_DurableRenamePath,
        )
        if not read_only:
            # orbax can do this too, but in a background thread that races a second manager's cleanup.
            self._remove_unfinished_saves()
        # orbax reads every step's _CHECKPOINT_METADATA here and logs a garbled one; _verify reports it on restore.
        with _dropping_absl_errors("Failed to json parse Metadata file"):
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Waits for pending work and releases orbax's threads."""
        self._manager.close()

    def committed_steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending."""
        return sorted(step for step in self._manager.all_steps() if self._is_committed(step))

    def latest_step(self) -> int | None:
        """The newest committed step, or None if there is none."""
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        *,
        train_state: TD3State,
        host_state: dict,
        config: dict,
        replay_state: dict | None = None,
    ) -> None:
        """Writes checkpoint `step` and returns once it is committed and durable.

        The replay arrays may be views of live storage (`ReplayBuffer.state_dict`):
        they are written before this returns, so the caller may mutate them after.

        Args:
          step: the checkpoint's step (a directory name); must exceed every
            committed step.
          train_state: the `TD3State`; arrays only (its key as raw uint32 data).
          host_state: JSON dict: env step, episode count, NumPy
            `bit_generator.state` dicts, noise schedule position, ...
          config: the resolved run config as a JSON dict.
          replay_state: `ReplayBuffer.state_dict()`: NumPy arrays plus JSON
            values; ignored when `save_replay` is False.

        Raises:
          TypeError: a JSON part would not come back identical from JSON, or
            the train state holds a typed PRNG key (orbax cannot store those).
          CheckpointError: read-only, `step` is not after the latest committed step, or the write failed
            (a full disk, lost permissions: one line; nothing of the step is left behind).
        """
        if self.read_only:
            raise CheckpointError(f"checkpoint directory {self.directory} was opened read-only; cannot save")
        step = int(step)
        typed_keys = [
            contents.path_name(path) for path, leaf in jax.tree_util.tree_flatten_with_path(train_state)[0]
            if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)
        ]
        if typed_keys:
            raise TypeError(
                f"train_state.{typed_keys[0]} is a typed PRNG key; store jax.random.key_data(key) instead"
            )
        contents.check_json_exact(_HOST, host_state)
        contents.check_json_exact(_CONFIG, config)
        stored_train_state, empty_train_state = contents.without_empty_arrays(train_state)
        meta: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "step": step, "replay": None, "empty_train_state": empty_train_state,
        }
        items = {
            _TRAIN_STATE: ocp.args.StandardSave(stored_train_state),
            _HOST: ocp.args.JsonSave(host_state),
            _CONFIG: ocp.args.JsonSave(config),
        }
        if self.save_replay and replay_state is not None:
            arrays = {name: value for name, value in replay_state.items() if isinstance(value, np.ndarray)}
            scalars = {name: value for name, value in replay_state.items() if name not in arrays}
            contents.check_json_exact("replay_state", scalars)
            arrays, empty_arrays = contents.without_empty_arrays(arrays)
            arrays = {name: value for name, value in arrays.items() if value is not None}
            meta["replay"] = {"arrays": sorted(arrays), "empty_arrays": empty_arrays, "scalars": scalars}
            if arrays:
                items[_REPLAY] = ocp.args.StandardSave(arrays)
        items[_META] = ocp.args.JsonSave(meta)

        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise CheckpointError(
                f"cannot save step {step} in {self.directory}: it already holds committed step {latest}; "
                "resume from the latest checkpoint or use a new run directory"
            )
        self._remove_uncommitted(min_step=step)
        threads_before = set(threading.enumerate())
        # Each of orbax's writer threads logs a failure with its traceback; this save raises it once.
        with _dropping_absl_errors("_SignalingThread.run() raised an exception"):
            try:
                if not self._manager.save(step, args=ocp.args.Composite(**items)):
                    raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")
                self._manager.wait_until_finished()
            except Exception as error:
                self._abandon_failed_save(step, threads_before)
                cause = _file_error(error)  # how orbax and tensorstore report a full disk
                if cause is not None:
                    hint = "; free disk space or fix permissions" if os_errno(cause) is not None else ""
                    raise CheckpointError(
                        f"could not write checkpoint {step} in {self.directory} ({brief(cause)}){hint}"
                    ) from error
                raise

    def restore(
        self,
        step: int | None = None,
        *,
        abstract_train_state: TD3State,
        with_replay: bool = True,
    ) -> Restored:
        """Reads a committed checkpoint back bit-identically.

        Args:
          step: the step to restore; None means the latest committed one.
          abstract_train_state: a `TD3State` of the run's config (concrete, or
            from `jax.eval_shape`): gives the tree structure, shapes, dtypes
            and the static config of the result.
          with_replay: read the replay arrays if the checkpoint has them.

        Raises:
          CheckpointError: no such committed step, another format, a train
            state that does not match `abstract_train_state`, or unreadable files.
        """
        step = self._committed_step(step)
        self._verify(step, hash_skipped=() if with_replay else (_REPLAY,))
        where = self.directory / str(step)
        meta = self._read_json(step, _META)
        found = meta.get("format") if isinstance(meta, dict) else None
        if found != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint {where} has format {found!r} but this td3_jax reads format "
                f"{CHECKPOINT_FORMAT}; restore it with the td3_jax version that wrote it"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_train_state)
        stored = contents.leaves_by_name(self._item_metadata(step, _TRAIN_STATE))
        stored.update(contents.empty_arrays(meta.get("empty_train_state", {})))
        mismatch = contents.first_mismatch(stored, contents.leaves_by_name(abstract))
        if mismatch:
            raise CheckpointError(
                f"checkpoint {where} does not match the config: {mismatch}; "
                f"use the config the run was trained with (stored in {where / _CONFIG / 'metadata'})"
            )
        items = {
            _TRAIN_STATE: ocp.args.StandardRestore(contents.without_empty_arrays(abstract)[0]),
            _HOST: ocp.args.JsonRestore(),
            _CONFIG: ocp.args.JsonRestore(),
        }
        replay_meta = meta.get("replay") if with_replay else None
        if replay_meta is not None and replay_meta["arrays"]:
            stored_replay = self._item_metadata(step, _REPLAY)
            if sorted(stored_replay) != replay_meta["arrays"]:
                raise CheckpointError(
                    f"checkpoint {where} is corrupt: replay arrays {sorted(stored_replay)} differ from the "
                    f"recorded {replay_meta['arrays']}; {_FALLBACK}"
                )
            # NumPy targets (untouched np.empty pages cost no memory) so NumPy arrays come back.
            target = {name: np.empty(m.shape, m.dtype) for name, m in stored_replay.items()}
            items[_REPLAY] = ocp.args.StandardRestore(target)
        restored = self._read(step, items)
        replay_state = None
        if replay_meta is not None:
            replay_state = {
                **(restored[_REPLAY] if replay_meta["arrays"] else {}),
                **contents.empty_arrays(replay_meta.get("empty_arrays", {})),
                **replay_meta["scalars"],
            }
        return Restored(
            step=step,
            train_state=contents.with_empty_arrays(restored[_TRAIN_STATE], abstract),
            host_state=restored[_HOST],
            config=restored[_CONFIG],
            replay_state=replay_state,
        )

    def read_config(self, step: int | None = None) -> dict:
        """The resolved run config of a committed checkpoint, without reading any array."""
        step = self._committed_step(step)
        self._verify(step, hash_skipped=(_TRAIN_STATE, _REPLAY))
        return self._read_json(step, _CONFIG)

    def read_host_state(self, step: int | None = None) -> dict:
        """The host state of a committed checkpoint, without reading any array."""
        step = self._committed_step(step)
        self._verify(step, hash_skipped=(_TRAIN_STATE, _REPLAY))
        return self._read_json(step, _HOST)

    def delete(self, step: int) -> None:
        """Deletes committed checkpoint `step`.

        Raises:
          CheckpointError: read-only, or no such committed step.
        """
        if self.read_only:
            raise CheckpointError(f"checkpoint directory {self.directory} was opened read-only; cannot delete")
        self._manager.delete(self._committed_step(step))

    def delete_from(self, step: int) -> list[int]:
        """Deletes every committed checkpoint at `step` or later; returns their steps.

        Raises:
          CheckpointError: read-only.
        """
        later = [s for s in self.committed_steps() if s >= step]
        for s in later:
            self.delete(s)
        return later

    def _verify(self, step: int, hash_skipped: tuple[str, ...]) -> None:
        """Checks the step's files against the checksums recorded at save (sizes of all, digests of the rest)."""
        where = self.directory / str(step)
        try:
            verified = integrity.verify(where, hash_skipped)
        except integrity.CorruptFile as error:
            raise CheckpointError(f"checkpoint {where} is corrupt: {error}; {_FALLBACK}") from None
        if not verified and where not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(where)
            _LOG.warning("checkpoint %s has no %s (saved by an older td3_jax): its files cannot be verified",
                         where, integrity.MANIFEST)

    def _is_committed(self, step: int) -> bool:
        return (self.directory / str(step) / COMMIT_MARKER).is_file()

    def _committed_step(self, step: int | None) -> int:
        committed = self.committed_steps()
        if step is None:
            if not committed:
                raise CheckpointError(self._no_checkpoint_message())
            return committed[-1]
        if int(step) not in committed:
            raise CheckpointError(
                f"no committed checkpoint for step {step} in {self.directory} "
                f"(committed: {committed or 'none'}); "
                "pick one of those steps or omit the step for the latest"
            )
        return int(step)

    def _no_checkpoint_message(self) -> str:
        hint = "pass the checkpoints directory of a run that has saved at least once"
        if (self.directory / "checkpoints").is_dir():
            hint = f"did you mean {self.directory / 'checkpoints'}?"
        elif self.directory.name.isdigit() and (self.directory / COMMIT_MARKER).is_file():
            hint = f"that is one checkpoint; pass its parent {self.directory.parent}"
        return f"no committed checkpoint in {self.directory}; {hint}"

    def _remove_unfinished_saves(self) -> None:
        """Deletes orbax temporary step directories left by saves that never reached their rename."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            step, suffix, _ = path.name.partition(atomicity.TMP_DIR_SUFFIX)
            if suffix and step.isdigit() and path.is_dir():
                _LOG.warning("removing unfinished checkpoint save %s", path)
                shutil.rmtree(path)

    def _remove_uncommitted(self, min_step: int) -> None:
        """Deletes leftovers of interrupted saves at or after `min_step`: they would block this save."""
        removed = False
        for step in self._manager.all_steps():
            if step >= min_step and not self._is_committed(step):
                _LOG.warning("removing uncommitted checkpoint %s", self.directory / str(step))
                shutil.rmtree(self.directory / str(step))
                removed = True
        if removed:
            self._manager.reload()

    def _abandon_failed_save(self, step: int, threads_before: set[threading.Thread]) -> None:
        """After a failed save: waits for orbax's writes still in flight, then deletes what the save left.

        orbax saves the items concurrently and the first error ends the event
        loop that drives them, shutting down its executor while the other items'
        writes go on in background threads. Left alone, those fail later with
        secondary errors ("Event loop is closed", "cannot schedule new futures
        after shutdown") that are printed after the real one when the process
        exits, and they keep writing into the temporary directory that a retry
        of the same step would reuse.
        """
        deadline = time.monotonic() + _FAILED_SAVE_WAIT_S
        in_flight = set(threading.enumerate()) - threads_before
        for thread in in_flight:
            while True:
                try:
                    thread.join(max(0.0, deadline - time.monotonic()))
                    break
                except RuntimeError:  # listed while still starting (threading's limbo): join it once it runs
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.01)
        if any(thread.is_alive() for thread in in_flight):
            _LOG.warning("a failed checkpoint save is still writing after %.0f s; its leftovers stay until the "
                         "next Checkpointer opens %s", _FAILED_SAVE_WAIT_S, self.directory)
            return
        leftovers = [self.directory / f"{step}{atomicity.TMP_DIR_SUFFIX}"]
        if not self._is_committed(step):
            leftovers.append(self.directory / str(step))
        for path in leftovers:
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                _LOG.warning("could not remove %s after a failed save: %s", path, brief(error))
        self._manager.reload()

    def _require_items(self, step: int, items) -> None:
        for item in items:
            if not (self.directory / str(step) / item).is_dir():
                raise CheckpointError(
                    f"checkpoint {self.directory / str(step)} is incomplete: its {item!r} item is missing; "
                    f"{_FALLBACK}"
                )

    def _item_metadata(self, step: int, item: str):
        where = self.directory / str(step)
        self._require_items(step, [item])
        try:
            metadata = self._manager.item_metadata(step)[item]
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"checkpoint {where} has unreadable {item} metadata ({brief(error)}); {_FALLBACK}"
            ) from error
        if metadata is None:
            raise CheckpointError(f"checkpoint {where} has no {item} metadata; {_FALLBACK}")
        return metadata.tree

    def _read_json(self, step: int, item: str) -> dict:
        return self._read(step, {item: ocp.args.JsonRestore()})[item]

    def _read(self, step: int, items: dict) -> ocp.args.Composite:
        """orbax restore; file-level failures (missing, truncated, undecodable) become CheckpointError."""
        where = self.directory / str(step)
        self._require_items(step, items)
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:
            cause = _file_error(error)
            if cause is None:
                raise
            raise CheckpointError(
                f"checkpoint {where} could not be read ({brief(cause)}); it is corrupt or incomplete, "
                f"{_FALLBACK}"
            ) from error


def save_alone(directory: str | os.PathLike, step: int, *, train_state: TD3State, config: dict) -> None:
    """Saves `train_state` (no replay) as the one checkpoint of `directory`, replacing one at `step` or later.

    Raises:
      CheckpointError: the write failed (one line).
      OSError: `directory` cannot be created.
    """
    with Checkpointer(directory, max_to_keep=1, save_replay=False) as checkpointer:
        checkpointer.delete_from(step)
        checkpointer.save(step, train_state=train_state, host_state={"env_step": step}, config=config)


def load_config(directory: str | os.PathLike, step: int | None = None) -> dict:
    """The resolved run config of the latest (or given) committed checkpoint in `directory`.

    Reads JSON only, so `td3-jax eval --checkpoint D` can rebuild the networks
    before restoring any array. Host-side I/O.

    Raises:
      CheckpointError: no such directory or committed checkpoint, or an unreadable config.
    """
    with Checkpointer(directory, read_only=True) as checkpointer:
        return checkpointer.read_config(step)


def _file_error(error: BaseException) -> BaseException | None:
    """The file-level failure behind a save or restore error, or None if it is something else.

    orbax and tensorstore report a full disk, lost permissions and missing,
    truncated or undecodable files as OSError or ValueError (JSONDecodeError
    included); orbax wraps failed array reads in a bare Exception whose cause is
    that error. Shape and structure mismatches are ruled out before reading, so
    on a restore these mean the files are bad.
    """
    if isinstance(error, (OSError, ValueError)):
        return error
    if type(error) is Exception and isinstance(error.__cause__, (OSError, ValueError)):
        return error.__cause__
    return None
