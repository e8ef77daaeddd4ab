"""How much memory a replay buffer may take on this machine. Host-side."""

from __future__ import annotations

import os


class ReplayMemoryError(ValueError):
    """The requested buffer would not fit in the memory this machine has available."""


def available_memory_bytes() -> int | None:
    """Memory this process may still allocate, or None when it cannot be read. Host-side.

    The smaller of the kernel's MemAvailable and the headroom under the cgroup
    memory limit (containers report the host's MemAvailable).
    """
    candidates = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_path) as limit_file, open(usage_path) as usage_file:
                limit = limit_file.read().strip()
                if limit != "max":
                    candidates.append(int(limit) - int(usage_file.read().strip()))
        except (OSError, ValueError):
            pass
    if not candidates and hasattr(os, "sysconf"):
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return min(candidates) if candidates else None
