"""Stand-ins for tests/test_carla_supervision.py: a CARLA server process, and a CARLA env that hangs or aborts.

As a script this is the server: ``python fake_carla_server.py --port P
[--delay S] [--child]`` listens on 127.0.0.1:P after S seconds, so that
readiness polling meets a real socket. Each connection may send one line:
``ping`` is answered ``pong``, ``hang`` stops the server serving (it keeps
its socket, as a hung simulator does), ``abort`` calls `os.abort()`.
``--child`` first starts a child process in the same process group, as
CarlaUE4.sh starts the simulator binary.

`FlakyCarlaEnv` is imported by spawn-started worker processes (so it lives
at module level). Its observations encode (env, episode, step), it appends
every step it returns to ``steps-<env>.log``, and it hangs forever or
aborts at step 2 of an episode when ``fail-<env>-<n>`` says so, or in a
reset when ``reset-<env>-<n>`` does (consumed in order of n, removed before
it acts, so that the restarted worker runs on).
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

EPISODE_STEPS = 6
FAIL_AT_STEP = 2


def serve(port: int, delay_s: float, child: bool) -> None:
    if child:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    time.sleep(delay_s)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    while True:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(1.0)
            try:
                command = connection.recv(64).decode().strip()
            except OSError:
                continue
            if command == "ping":
                connection.sendall(b"pong\n")
            elif command == "hang":
                time.sleep(3600)
            elif command == "abort":
                os.abort()


def send(port: int, command: str) -> None:
    """Sends one command line to the fake server on 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as connection:
        connection.sendall(command.encode() + b"\n")
        if command == "ping":
            connection.recv(16)


# ---------------------------------------------------------------- the env in a worker process


def frame_code(env: int, episode: int, t: int) -> int:
    return (env * 50 + episode * 7 + t) % 256


class FlakyCarlaEnv(gymnasium.Env):
    """A CARLA-shaped env (image stack + 3-vector (env, episode, t), 2 actions) that fails as scripted."""

    def __init__(self, env_index: int, script_dir: str, stack: int):
        from td3_jax.envs.spaces import FrameStack, action_space, observation_space  # imports jax: not in the server

        self.env_index, self.script_dir = env_index, Path(script_dir)
        self.observation_space = observation_space(stack, 3)
        self.action_space = action_space()
        self._stack = FrameStack(stack)
        # Episode ids are unique across worker processes: pid-based, counting up.
        self.episode = (os.getpid() % 10000) * 100 - 1
        self.t = 0

    def _frame(self):
        return np.full((84, 84), frame_code(self.env_index, self.episode, self.t), np.uint8)

    def _obs(self, image) -> dict:
        return {"image": image, "vector": np.array([self.env_index, self.episode, self.t], np.float32)}

    def reset(self, *, seed=None, options=None):
        self._fail_if_scripted("reset")
        self.episode += 1
        self.t = 0
        return self._obs(self._stack.reset(self._frame())), {}

    def step(self, action):
        if self.t == FAIL_AT_STEP:
            self._fail_if_scripted("fail")
        self.t += 1
        reward = float(self.t) + 0.25 * self.env_index
        with open(self.script_dir / f"steps-{self.env_index}.log", "a") as log:
            log.write(f"{self.episode} {self.t} {float(action[0])!r} {float(action[1])!r} {reward!r}\n")
        done = self.t == EPISODE_STEPS
        obs = self._obs(self._stack.push(self._frame()))
        return obs, reward, done and self.env_index % 2 == 0, done and self.env_index % 2 == 1, {}

    def _fail_if_scripted(self, kind: str) -> None:
        markers = sorted(self.script_dir.glob(f"{kind}-{self.env_index}-*"), key=lambda p: int(p.name.split("-")[-1]))
        if not markers:
            return
        mode = markers[0].read_text()
        markers[0].unlink()
        if mode == "hang":
            while True:
                time.sleep(3600)
        if mode == "abort":
            os.abort()

    def close(self):
        pass


def flaky_block(spec, script_dir: str):
    """A worker's env: its block of `FlakyCarlaEnv` (what `make_block_env` builds from CARLA envs).

    Logs ``<first env> <Traffic Manager port>`` to ``tm-ports.log``, one line per build.
    """
    with open(Path(script_dir) / "tm-ports.log", "a") as log:
        log.write(f"{spec.first} {spec.config.carla.tm_port}\n")
    from td3_jax.envs.workers import VecBlockEnv

    envs = [
        functools.partial(FlakyCarlaEnv, spec.first + j, script_dir, spec.config.stack) for j in range(spec.num_envs)
    ]
    return VecBlockEnv(SyncVectorEnv(envs, autoreset_mode=AutoresetMode.SAME_STEP))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--child", action="store_true")
    arguments = parser.parse_args()
    serve(arguments.port, arguments.delay, arguments.child)
