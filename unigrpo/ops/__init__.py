"""Hot-path ops of UniGRPO. Each has a plain-PyTorch reference in
``unigrpo.ops.reference`` (the spec) and runs on the fastest backend available
for its tensors' device (``backend=`` or ``UNIGRPO_BACKEND`` forces one of
"native", "triton", "torch")."""

from . import reference
from .dispatch import available_backends, get_backend
from .fused_linear_grpo_loss import FusedGRPOLoss, fused_linear_grpo_loss
from .fused_linear_token_logprobs import fused_linear_token_logprobs
from .grpo_token_loss import GRPOTokenLoss, grpo_token_loss
from .sde import FlowStepLoss, flow_grpo_step_loss, sde_step, sde_step_logprob, velocity_mse
from .sde_coefficients import sde_coefficients
from .token_logprobs import token_logprobs

__all__ = [
    "FlowStepLoss", "FusedGRPOLoss", "GRPOTokenLoss", "available_backends", "flow_grpo_step_loss",
    "fused_linear_grpo_loss", "fused_linear_token_logprobs",
    "get_backend", "grpo_token_loss", "reference", "sde_coefficients", "sde_step", "sde_step_logprob",
    "token_logprobs", "velocity_mse",
]
