"""`td3-jax` relaunches itself once with glibc's huge-page tunable where that changes anything, and never
overrides a user's own choice."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from td3_jax import cli

MADVISE = "always [madvise] never\n"


@pytest.mark.parametrize("environ, libc, thp_mode, expected", [
    ({}, ("glibc", "2.36"), MADVISE, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}, ("glibc", "2.35"), MADVISE, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, ("glibc", "2.36"), MADVISE, False),  # the user's choice
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, ("glibc", "2.36"), MADVISE, False),  # already relaunched
    ({}, ("glibc", "2.34"), MADVISE, False),  # the tunable does not exist yet
    ({}, ("", ""), MADVISE, False),  # musl, or no libc found
    ({}, ("glibc", "2.36"), "[always] madvise never\n", False),  # huge pages without asking
    ({}, ("glibc", "2.36"), "always madvise [never]\n", False),  # refused whatever malloc asks
])
def test_wants_huge_pages_only_where_the_tunable_decides_something(environ, libc, thp_mode, expected):
    assert cli.wants_huge_pages(environ, libc, thp_mode) is expected


@pytest.mark.parametrize("own_tunables", ["", "glibc.malloc.tcache_count=7", "glibc.malloc.hugetlb=0"])
def test_the_command_runs_under_the_tunable_and_keeps_the_callers_own(tmp_path, own_tunables):
    """The command's own process reports the tunables it ran under (the bench records them) and keeps the
    caller's."""
    environ = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if own_tunables:
        environ["GLIBC_TUNABLES"] = own_tunables
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "td3_jax.cli", "bench", "--quick", "--only", "replay", "--no-torch",
               "--json", str(out)]
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(out.read_text())["machine"]["GLIBC_TUNABLES"]
    if cli.wants_huge_pages(environ, platform.libc_ver(), cli.thp_mode()):
        assert recorded == ":".join(filter(None, (own_tunables, cli.HUGE_PAGES_TUNABLE)))
    else:
        assert recorded == own_tunables
