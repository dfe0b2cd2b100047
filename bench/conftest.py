import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Which ISA level the native CPU kernels ran at (UNIGRPO_CPU_ISA picks another)."""
    try:
        import unigrpo._C as C

        machine_info["unigrpo_cpu_isa"] = C.cpu_isa()
    except ImportError:
        machine_info["unigrpo_cpu_isa"] = None
