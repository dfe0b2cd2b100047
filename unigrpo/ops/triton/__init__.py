"""Triton kernels of unigrpo (``unigrpo.ops.triton``).

Importing this package imports triton and defines the kernels; whether they are
compiled for a GPU or run by Triton's CPU interpreter is fixed at that moment by
``TRITON_INTERPRET`` (see ``INTERPRETED``). The backend that allocates outputs,
picks launch configurations and implements the op contract is
``unigrpo.ops.backends.triton``.
"""

from .sde import launch_sde_row_grad, launch_sde_row_sums
from .token_logprobs import MAX_GRID_DIM1, launch_logprob_backward, launch_logprob_forward
from .token_logprobs import _logprob_fwd_kernel as _probe_kernel

#: True when the kernels were defined under TRITON_INTERPRET=1 (they then take
#: CPU tensors and run in the interpreter; they cannot launch on a GPU).
INTERPRETED = type(_probe_kernel).__name__ == "InterpretedFunction"
del _probe_kernel

__all__ = [
    "INTERPRETED",
    "MAX_GRID_DIM1",
    "launch_sde_row_grad",
    "launch_sde_row_sums",
    "launch_logprob_backward",
    "launch_logprob_forward",
]
