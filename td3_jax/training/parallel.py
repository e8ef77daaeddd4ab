"""Data-parallel TD3 updates over a device mesh, with `jax.sharding`. Host-side setup.

The update itself is unchanged (`td3.update_many`); only where its inputs live
changes. A one-axis mesh ``("data",)`` spans the chosen devices; the
`TD3State` is replicated on every device (``NamedSharding(mesh, P())``) and
each stacked batch ``(K, B, ...)`` is split along its batch axis
(``P(None, "data")``), so every device holds ``B / n`` transitions of each of
the K updates. The losses average over the batch with `jnp.mean`, so the
compiler (GSPMD) turns each mean and each gradient into a local reduction
plus an all-reduce: the result is the single-device update on the same global
batch, up to float32 summation order. No code here writes a collective.

Target-smoothing noise is drawn for the global batch shape; with
``jax_threefry_partitionable`` (the default since JAX 0.5) the numbers do not
depend on how the batch is split.

Multi-host: call `initialize_distributed()` before anything touches JAX, then
every process builds the same `DataParallel("auto")` (all devices of all
processes), keeps its own envs and replay buffer, and passes its own
``(K, B_local, ...)`` batches to `place_batches`; the global batch is
``B_local * process_count``. See docs/scaling.md.

    parallel = DataParallel("auto")
    state = parallel.place_state(state)
    state, metrics = parallel.update_many(state, parallel.place_batches(batches))
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from td3_jax.core import td3
from td3_jax.core.td3 import TD3State
from td3_jax.core.types import Batch, PackedBatch

DATA_AXIS = "data"
"""Name of the mesh axis the batch is split along."""


def initialize_distributed(**kwargs: Any) -> tuple[int, int]:
    """Joins a multi-host run: `jax.distributed.initialize(**kwargs)`. Host-side.

    Must run before any JAX computation in the process. On Slurm, Open MPI and
    Cloud TPU no arguments are needed. Elsewhere pass ``coordinator_address``
    ("host:port" of process 0), ``num_processes`` and ``process_id``, or set
    ``JAX_COORDINATOR_ADDRESS`` (read by JAX) and ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` (read here when the arguments are not given).

    Returns:
      (process_index, process_count) after joining.
    """
    for name, variable in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if kwargs.get(name) is None and os.environ.get(variable):
            kwargs[name] = int(os.environ[variable])
    jax.distributed.initialize(**kwargs)
    return jax.process_index(), jax.process_count()


def select_devices(spec: str | int = "auto") -> list[jax.Device]:
    """The devices an update runs on.

    Args:
      spec: "auto" for every device of every process (`jax.devices()`), or a
        count N ("2" or 2) for the first N devices of a single-process run.

    Raises:
      ValueError: the spec is neither "auto" nor a positive count, asks for
        more devices than exist, or asks for a subset in a multi-process run.
    """
    devices = jax.devices()
    if spec == "auto":
        return devices
    try:
        count = int(spec)
    except (TypeError, ValueError):
        raise ValueError(f'devices must be "auto" or a positive device count, got {spec!r}') from None
    if count < 1 or count > len(devices):
        raise ValueError(
            f"devices={spec!r} but this run sees {len(devices)} {devices[0].platform} device(s); "
            f'use "auto" or a count from 1 to {len(devices)}'
        )
    if jax.process_count() > 1 and count != len(devices):
        raise ValueError(f'a multi-process run uses every device; set devices to "auto" (got {spec!r})')
    return devices[:count]


class DataParallel:
    """The TD3 update, data-parallel over a one-axis device mesh. Host-side.

    Args:
      devices: a spec for `select_devices` ("auto", or a device count), or an
        explicit sequence of devices.

    Attributes:
      mesh: the ``("data",)`` mesh.
      replicated: sharding of the state and of the metrics: a full copy per device.
      batch_sharding: sharding of a stacked ``(K, B, ...)`` batch: split along B.
    """

    def __init__(self, devices: str | int | list[jax.Device] = "auto"):
        if isinstance(devices, (str, int)):
            devices = select_devices(devices)
        devices = list(devices)
        self.mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(None, DATA_AXIS))
        self._update_many = jax.jit(
            td3.update_many,
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
        )

    @property
    def num_devices(self) -> int:
        """Devices in the mesh (all processes)."""
        return self.mesh.size

    @property
    def local_devices(self) -> int:
        """Devices of the mesh that this process drives."""
        return len(self.mesh.local_devices)

    def check_batch_size(self, batch_size: int) -> None:
        """Raises ValueError unless this process's `batch_size` splits evenly over its devices."""
        devices = self.local_devices
        if batch_size % devices:
            raise ValueError(
                f"algorithm.batch_size={batch_size} does not split over {devices} devices; "
                f"use a multiple of {devices} (e.g. {batch_size + devices - batch_size % devices})"
            )

    def place_state(self, state: TD3State) -> TD3State:
        """A copy of `state` replicated on every device of the mesh.

        In a multi-process run every process must pass the same state (same
        seed and config, or the same checkpoint).
        """
        if jax.process_count() == 1:
            return jax.device_put(state, self.replicated)
        return jax.tree.map(
            lambda leaf: jax.make_array_from_process_local_data(self.replicated, np.asarray(leaf)), state
        )

    def abstract_state(self, state: TD3State) -> TD3State:
        """Shapes, dtypes and the replicated sharding of `state`'s leaves, for `Checkpointer.restore`.

        Restoring against it puts every array straight onto the mesh.
        """
        return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=self.replicated), state)

    def place_batches(self, batches: Batch | PackedBatch) -> Batch | PackedBatch:
        """Global arrays of this process's stacked batches, split along the batch axis.

        Args:
          batches: NumPy arrays with leading axes ``(K, B_local)``.

        Returns:
          The same tree of `jax.Array`s of global shape ``(K, B_local * process_count, ...)``.

        Raises:
          ValueError: B_local does not split evenly over this process's devices.
        """
        leaves = jax.tree.leaves(batches)
        if any(np.ndim(leaf) < 2 for leaf in leaves):
            raise ValueError("place_batches takes stacked batches with leading axes (K, B); use batch[None] for K=1")
        self.check_batch_size(np.shape(leaves[0])[1])
        return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(self.batch_sharding, leaf), batches)

    def update_many(self, state: TD3State, batches: Batch | PackedBatch):
        """`td3.update_many` on the mesh: K updates of the global batch.

        Args:
          state: from `place_state` (or a previous call).
          batches: from `place_batches`; NumPy arrays are placed here.

        Returns:
          (new state, metrics stacked along K), both replicated.
        """
        if any(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(batches)):
            batches = self.place_batches(batches)
        return self._update_many(state, batches)

    @staticmethod
    def local_params(params: Any) -> Any:
        """This process's first replica of a replicated tree, for `td3.act` (no copy).

        Acting on the replicated tree would run the policy on every device of
        the mesh, and in a multi-process run cannot be called with local
        observations at all.
        """
        return jax.tree.map(lambda leaf: leaf.addressable_shards[0].data, params)
