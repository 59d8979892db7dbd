"""The allocator tuning is applied on glibc, once, and can be switched off."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = "from thinkrec.allocator import tune_allocator; print(tune_allocator(), tune_allocator())"


def _run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "THINKREC_ALLOCATOR"}
    if env_value is not None:
        env["THINKREC_ALLOCATOR"] = env_value
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuned_on_glibc_and_idempotent() -> None:
    assert _run(None) == "True True"


def test_switched_off_by_the_environment() -> None:
    assert _run("default") == "False False"
