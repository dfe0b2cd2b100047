"""Tolerances earned, not guessed (flash-attention's rule): a fast path may
differ from the fp32/fp64 reference by at most a small multiple of what the
reference itself loses when its output is rounded to the low-precision dtype."""

import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(device: str, *, big: bool = False) -> list[str]:
    """Backends available on ``device``; ``big`` drops the Triton interpreter (too slow for big shapes)."""
    from unigrpo.ops import available_backends

    names = available_backends(torch.device(device))
    if big and device == "cpu":
        names = [n for n in names if n != "triton"]
    return names


def assert_close_earned(out, ref_hi, lowp_dtype=None, ref_lo=None, rtol=2e-5, atol=1e-6, mult=2.0):
    """out: the fast path's output; ref_hi: the reference in fp64 on the same inputs.
    Besides atol + rtol |ref|, allow mult * the reference's own error when it
    rounds its output to ``lowp_dtype``, or when it runs in lower precision
    (``ref_lo``: the reference computed in fp32; its worst error anywhere, since an
    element where fp32 happened to round well earns nothing about the others)."""
    out = out.double()
    ref = ref_hi.double()
    bound = atol + rtol * ref.abs()
    if lowp_dtype is not None and lowp_dtype not in (torch.float32, torch.float64):
        bound = bound + mult * (ref.to(lowp_dtype).double() - ref).abs()
    if ref_lo is not None:  # flash-attention's rule: its max error over the tensor, not element by element
        bound = bound + mult * (ref_lo.double() - ref).abs().max()
    err = (out - ref).abs()
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (
        f"max error {err.max().item():.3e} exceeds bound; worst at flat index {worst.item()}: "
        f"out={out.flatten()[worst].item():.6e} ref={ref.flatten()[worst].item():.6e} "
        f"bound={bound.flatten()[worst].item():.3e}")


class LogitsSizeSpy:
    """The torch backend, recording the element count of every logits block its two
    log-prob kernels are handed (``seen``): a chunked op's extra memory, on any device."""

    def __init__(self) -> None:
        from unigrpo.ops import dispatch

        self.seen: list[int] = []
        self._be = dispatch.get_backend(torch.device("cpu"), "torch")

    def __getattr__(self, name):
        return getattr(self._be, name)

    def logprob_forward(self, logits, *a):
        self.seen.append(logits.numel())
        return self._be.logprob_forward(logits, *a)

    def logprob_backward(self, logits, *a):
        self.seen.append(logits.numel())
        return self._be.logprob_backward(logits, *a)
