"""CARLA servers seen from the trainer: readiness polling, and servers this process starts and restarts. Host-side.

`wait_until_listening` polls a server's RPC port with backoff until it
accepts a TCP connection, so a server that is still booting is waited for
(bounded) instead of failing the first reset at once.

`RemoteServers` are servers someone else runs (`env.workers.carla_servers`,
or `carla.host:carla.port`): recovering one means waiting until it listens
again. `LaunchedServers` start one server per env from
`env.workers.carla_server_command`, each in its own process group with its
own ports, restart one whose worker failed, and kill every process group
they started on `close`, at interpreter exit and on SIGTERM.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from typing import Sequence

from td3_jax.errors import UserError

LOOPBACK = "127.0.0.1"
_STOP_GRACE_S = 5.0


class CarlaServerUnavailableError(UserError):
    """A CARLA server did not accept connections within the readiness timeout."""


def wait_until_listening(
    host: str, port: int, timeout_s: float, *, process: subprocess.Popen | None = None, first_wait_s: float = 0.05
) -> float:
    """Polls ``host:port`` until it accepts a TCP connection; returns the seconds waited.

    Waits between attempts start at `first_wait_s` and double up to 2 s.

    Raises:
      CarlaServerUnavailableError: nothing listened within `timeout_s`, or
        `process` (the server being waited for) exited first. One line naming host and port.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    wait = first_wait_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.05, min(remaining, 2.0))):
                return time.monotonic() - start
        except OSError as error:
            reason = error.strerror or type(error).__name__
        if process is not None and process.poll() is not None:
            raise CarlaServerUnavailableError(
                f"the CARLA server for {host}:{port} exited with code {process.returncode} before it listened "
                f"(command: {shlex.join(process.args)})"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CarlaServerUnavailableError(
                f"no CARLA server at {host}:{port} (nothing listening after {timeout_s:.3g} s: {reason}); start one "
                f"with `CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}`, set env.workers.carla_server_command "
                f"to let training start it, or raise env.workers.carla_server_ready_timeout_s (see docs/carla.md)"
            )
        time.sleep(min(wait, remaining))
        wait = min(2 * wait, 2.0)


@dataclasses.dataclass(frozen=True)
class ServerPorts:
    """The ports one server uses: RPC, streaming (RPC + 1) and secondary-server (RPC + 2, CARLA >= 0.9.14)."""

    rpc: int

    @property
    def streaming(self) -> int:
        return self.rpc + 1

    @property
    def primary(self) -> int:
        return self.rpc + 2


class RemoteServers:
    """Servers this process does not run: it can only wait until one listens."""

    def __init__(self, addresses: Sequence[tuple[str, int]], ready_timeout_s: float):
        self.addresses = list(addresses)
        self.ready_timeout_s = ready_timeout_s

    def start(self) -> None:
        """Waits until every server listens (they boot concurrently, so one shared deadline)."""
        deadline = time.monotonic() + self.ready_timeout_s
        for host, port in dict.fromkeys(self.addresses):
            wait_until_listening(host, port, max(0.0, deadline - time.monotonic()))

    def recover(self, index: int) -> None:
        """Before a worker restart: waits until its server listens again (a supervisor may be restarting it)."""
        host, port = self.addresses[index]
        wait_until_listening(host, port, self.ready_timeout_s)

    def close(self) -> None:
        """Nothing to stop: the servers belong to someone else."""


class LaunchedServers:
    """One CARLA server process per env, started from a command template, restarted on demand, killed on close.

    Args:
      command: e.g. ``"CarlaUE4.sh -RenderOffScreen -nosound -carla-rpc-port={port}"``; the fields
        ``{port}``, ``{streaming_port}``, ``{primary_port}``, ``{gpu}`` and ``{index}`` are filled per server.
      rpc_ports: each server's RPC port (it also takes the next two).
      gpus: server i runs on ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES`` and ``{gpu}``); empty: unset.
      ready_timeout_s: how long one server may take to listen after its start.
    """

    def __init__(self, command: str, rpc_ports: Sequence[int], gpus: Sequence[int] = (), ready_timeout_s: float = 60.0):
        self.command = command
        self.ports = [ServerPorts(port) for port in rpc_ports]
        self.gpus = list(gpus)
        self.ready_timeout_s = ready_timeout_s
        self.processes: list[subprocess.Popen | None] = [None] * len(self.ports)
        self.addresses = [(LOOPBACK, ports.rpc) for ports in self.ports]
        # Kept alive by the registry until close(), so that exit and SIGTERM still find the processes.
        _REGISTRY.add(self)

    def argv(self, index: int) -> list[str]:
        ports = self.ports[index]
        gpu = self.gpus[index % len(self.gpus)] if self.gpus else ""
        return shlex.split(self.command.format(
            port=ports.rpc, streaming_port=ports.streaming, primary_port=ports.primary, gpu=gpu, index=index
        ))

    def start(self) -> None:
        """Starts every server, then waits until each listens (they boot concurrently)."""
        for index in range(len(self.ports)):
            self._spawn(index)
        deadline = time.monotonic() + self.ready_timeout_s
        for index in range(len(self.ports)):
            self._wait(index, max(0.0, deadline - time.monotonic()))

    def recover(self, index: int) -> None:
        """Restarts server `index` (crashed, hung, or left in synchronous mode by a dead client) and waits for it."""
        self.stop(index)
        self._spawn(index)
        self._wait(index, self.ready_timeout_s)

    def stop(self, index: int) -> None:
        """Kills server `index`'s whole process group (a launcher script and the simulator it starts)."""
        process, self.processes[index] = self.processes[index], None
        if process is not None:
            _kill_group(process)

    def close(self) -> None:
        for index in range(len(self.processes)):
            self.stop(index)
        _REGISTRY.discard(self)

    def _spawn(self, index: int) -> None:
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpus[index % len(self.gpus)])
        try:
            self.processes[index] = subprocess.Popen(self.argv(index), env=env, start_new_session=True)
        except OSError as error:
            host, port = self.addresses[index]
            raise CarlaServerUnavailableError(
                f"could not start the CARLA server for {host}:{port}: {error} "
                f"(env.workers.carla_server_command: {self.command!r})"
            ) from None

    def _wait(self, index: int, timeout_s: float) -> None:
        host, port = self.addresses[index]
        try:
            wait_until_listening(host, port, timeout_s, process=self.processes[index])
        except CarlaServerUnavailableError:
            self.stop(index)
            raise


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever is left of it after a grace period; reaps the leader."""
    for sig, grace_s in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)  # the group outlives its leader while a child of the launcher script runs
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass


class _Registry:
    """Every open `LaunchedServers`, closed at interpreter exit and on SIGTERM (if nobody else handles it)."""

    def __init__(self):
        self._open: set[LaunchedServers] = set()
        self._installed = False
        self._pid = os.getpid()

    def add(self, servers: LaunchedServers) -> None:
        self._open.add(servers)
        if not self._installed:
            self._installed, self._pid = True, os.getpid()
            atexit.register(self.close_all)
            self._chain_sigterm()

    def discard(self, servers: LaunchedServers) -> None:
        self._open.discard(servers)

    def close_all(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked worker inherited the registry: the servers are its parent's to stop
        for servers in list(self._open):
            servers.close()

    def _chain_sigterm(self) -> None:
        # The trainer's own handler (installed later, during train) stops cleanly and closes the env;
        # this one covers the default case, where SIGTERM would end the process without atexit.
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_sigterm(signum, _frame):
            self.close_all()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_sigterm)


_REGISTRY = _Registry()
