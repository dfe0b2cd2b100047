"""Peak extra memory of one call, measured honestly on CPU and CUDA.

CPU: PyTorch keeps no allocator statistics, so the call runs in a fresh
subprocess that resets its peak resident set (/proc/self/clear_refs) just
before the call and reads it (VmHWM) just after, with glibc's mmap threshold pinned so every large tensor is its
own mapping and goes back to the OS when freed. A warm-up on small inputs first
loads libraries and thread pools. CUDA: torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch

_SCRIPT = """
import json, sys, torch
torch.manual_seed(0)

def status(key):  # kB from /proc/self/status (VmHWM is per address space: not inherited from the parent)
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])

SMALL = True
exec(sys.argv[1]); exec(sys.argv[2])   # warm-up on small inputs
del SMALL
exec(sys.argv[1])                      # the real inputs
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current RSS
base = status("VmRSS:")
exec(sys.argv[2])
print(json.dumps({"base_kib": base, "peak_kib": status("VmHWM:")}))
"""


def peak_extra_bytes(setup: str, call: str, device: str = "cpu") -> int:
    """Bytes that ``call`` needs beyond the inputs ``setup`` made. ``setup`` sees a
    name SMALL defined (only) during the warm-up and should make small inputs then."""
    if device == "cuda":
        env: dict = {"torch": torch}
        exec(setup, env)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        exec(call, env)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    # cwd: not the checkout, whose unigrpo/ (no compiled extension) would shadow the installed package
    out = subprocess.run([sys.executable, "-c", _SCRIPT, setup, call], capture_output=True, text=True,
                         env=env, check=True, cwd=tempfile.gettempdir())
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return (r["peak_kib"] - r["base_kib"]) * 1024
