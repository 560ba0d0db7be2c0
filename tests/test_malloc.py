"""`keep_freed_memory`: memory a training step frees is reused by the next step, not faulted in again."""

import ctypes
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
    reason="glibc only",
)

# A 48 MiB weight: above the largest mmap threshold glibc picks by itself (32 MiB), so by default its gradient,
# allocated anew at each step (the Trainer sets gradients to None), is a fresh mapping faulted in page by page.
SCRIPT = """
import resource, sys, torch
from hf_spam.malloc import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
layer = torch.nn.Linear(768, 4 * 3072)
x = torch.randn(8, 768)
def step():
    layer.weight.grad = layer.bias.grad = None
    layer(x).square().sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
GRADIENT_PAGES = 768 * 4 * 3072 * 4 // 4096


def _page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


def test_a_steps_freed_gradients_are_reused_without_page_faults():
    applied, faults = _page_faults("keep")
    assert applied == "True"
    # Over ten steps: a few hundred pages, or once in a while one gradient's worth when the heap grows once.
    assert faults < 2.5 * GRADIENT_PAGES
    _, default_faults = _page_faults("default")
    assert default_faults > 7.5 * GRADIENT_PAGES  # glibc's defaults: nearly every page of every step's gradient
