"""The command line's allocator settings (``lightning_vit.runtime``): memory freed by one step is reused by the next
without faulting its pages in again; glibc's defaults fault them in every time."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from lightning_vit.runtime import tune_malloc
print(tune_malloc())
def step():  # two 20 MB tensors at once, as a step's activations, then freed
    x = torch.ones(5 * 2**20); y = torch.ones(5 * 2**20); del x, y
for _ in range(4):  # the heap settles on a layout within a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_step(malloc: str) -> tuple[str, float]:
    env = dict(os.environ, LIGHTNING_VIT_MALLOC=malloc)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    tuned, faults = out.split()
    return tuned, float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_tuned_malloc_keeps_freed_memory_for_the_next_step() -> None:
    tuned, faults = _faults_per_step("tuned")
    untouched, default = _faults_per_step("default")  # LIGHTNING_VIT_MALLOC=default: glibc's settings
    assert (tuned, untouched) == ("True", "False")
    assert default > 5000 and faults < 100  # 40 MB = 10,240 pages faulted in per step with glibc's defaults


def test_main_module_tunes_before_the_cli(monkeypatch) -> None:
    import lightning_vit.__main__ as entry

    calls = []
    monkeypatch.setattr(entry, "tune_malloc", lambda: calls.append("tune"))
    monkeypatch.setattr(entry, "cli_main", lambda: calls.append("cli"))
    entry.main()
    assert calls == ["tune", "cli"]
