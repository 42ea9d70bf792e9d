"""The command line's allocator settings (``lightning_vit.runtime``): memory freed by one step is reused by the next
without faulting its pages in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, resource, sys, torch
from lightning_vit.runtime import tune_malloc
if sys.argv[1] == "initial":  # glibc's initial thresholds (128 kB), which its dynamic ones start from
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    assert mallopt(-3, 128 * 1024) and mallopt(-1, 128 * 1024)
    print(False)
else:
    print(tune_malloc())
def step():  # a step's activations: eight 4 MB tensors alive at once, then freed
    xs = [torch.ones(2**20) for _ in range(8)]
    del xs
for _ in range(4):  # the heap settles on a layout within a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_step(setting: str, env_malloc: str = "") -> tuple[str, float]:
    env = dict(os.environ, LIGHTNING_VIT_MALLOC=env_malloc)
    run = subprocess.run([sys.executable, "-c", PROBE, setting], env=env, capture_output=True, text=True, check=True)
    tuned, faults = run.stdout.split()
    return tuned, float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_tuned_malloc_keeps_freed_memory_for_the_next_step() -> None:
    tuned, faults = _faults_per_step("tuned")
    assert tuned == "True" and faults < 100
    # the same steps with glibc's thresholds before they adapt: the 32 MB freed go back to the system every step
    _, initial = _faults_per_step("initial")
    assert initial > 5000  # 8,192 pages
    assert _faults_per_step("tuned", env_malloc="default")[0] == "False"  # the opt-out changes nothing


def test_main_module_tunes_before_the_cli(monkeypatch) -> None:
    import lightning_vit.__main__ as entry

    calls = []
    monkeypatch.setattr(entry, "tune_malloc", lambda: calls.append("tune"))
    monkeypatch.setattr(entry, "cli_main", lambda: calls.append("cli"))
    entry.main()
    assert calls == ["tune", "cli"]
