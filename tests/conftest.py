import os

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run (a red CI is then a real,
# reproducible failure); HYPOTHESIS_PROFILE=explore searches new ones.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

# Without a GPU, Triton kernels are tested under the interpreter (small shapes).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    from unigrpo.ops.dispatch import _module

    for name in ("native", "triton"):
        err = getattr(_module(name), "load_error", None)
        if err:
            print(f"unigrpo: {name} backend unavailable: {err}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
