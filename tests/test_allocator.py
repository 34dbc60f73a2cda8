"""The worker's allocator setting: a forward's activations reuse their pages instead of faulting in new ones."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORWARDS = """
import json, resource, sys, torch
if sys.argv[1] == "keep":
    from worker.compute.allocator import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()
conv = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1))
x, faults = torch.randn(4, 3, 256, 256), []
with torch.inference_mode():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        conv(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def page_faults_per_forward(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", FORWARDS, mode], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_kept_heap_stops_page_faults_on_every_forward():
    plain, kept = page_faults_per_forward("plain"), page_faults_per_forward("keep")
    activation_pages = 2 * 4 * 32 * 256 * 256 * 4 // 4096  # two 32-channel maps of 4 images, float32
    assert min(plain[-2:]) > activation_pages // 2  # glibc's default: fresh pages for every big tensor
    # after warm-up the same pages serve the forwards (an odd one may still grow the heap once)
    assert sum(kept[-3:]) < sum(plain[-3:]) / 4, (kept, plain)
