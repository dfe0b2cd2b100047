"""What the backend tests share: the backends under test, their inputs, and the
accuracy each backend is held to against ``torch_backend`` (the readable
statement of the math, ``unigrpo/ops/backends/__init__.py``).

``test_backend_contract.py`` runs the contract (the four kernels against the
reference) on every backend; ``test_{native,triton,cuda}_backend.py`` keep what
only one backend promises and import their helpers from here. Not a test module
(pytest collects ``test_*.py`` only); imported as ``ops.backend_support``
(``tests`` is on pytest's ``pythonpath``, as for ``tests/helpers.py``).

Tolerances are each backend's own and are not unified: the native CPU kernels
are checked against an fp64 reference at fp32 accuracy and one ulp of the output
dtype; the Triton and CUDA kernels against ``torch_backend`` with
``torch.testing.assert_close``, the CUDA ones with ``atol`` scaled by the logits'
magnitude.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from dataclasses import dataclass

import pytest
import torch
from helpers import DEVICES, backends_for

from unigrpo.ops.backends import torch_backend as ref

CUDA = "cuda" in DEVICES

# --------------------------------------------------------------------------- inputs

LAYOUTS = ("contig", "stride", "offset")


def make_logits(device, n, v, dtype, layout="contig", extreme=False, seed=0):
    """(N, V) logits and (N,) ids on ``device``. layout: 'contig'; 'stride' (row
    stride v + 9: rows start at varying 16-byte offsets); 'offset' (also a base
    pointer one element off). extreme: about 30% of the logits are +-1e4, the
    max in the first element of row 0 and the last of row 1, row 2 all equal."""
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(n, v + 9, generator=g) * 3.0
    if extreme:
        big = torch.randint(0, 2, (n, v + 9), generator=g).float() * 2e4 - 1e4  # +-1e4
        pick = torch.rand(n, v + 9, generator=g) < 0.3
        full = torch.where(pick, big, full)
        full[0, 0] = 1e4  # max in the first (scalar head / first chunk) element
        if n > 1:
            full[1, v - 1] = 1e4  # max in the tail
        if n > 2:
            full[2, :] = -1e4  # all equal
    full = full.to(dtype).to(device)
    if layout == "contig":
        logits = full[:, :v].contiguous()
    elif layout == "stride":
        logits = full[:, :v]
        assert logits.stride() == (v + 9, 1)
    elif layout == "offset":
        logits = full[:, 1 : v + 1]
    else:
        raise ValueError(layout)
    ids = torch.randint(0, v, (n,), generator=g).to(device)
    return logits, ids


WEIGHT_KINDS = (None, "D", "BD")


def make_flow_inputs(device, bsz, d, dtype, weight_kind, offset=False, seed=0):
    """x, x_next, v, cx, cv, v_ref, weight, a, b; weight None, (D,) or (B, D).
    offset: every (B, D) tensor starts one element past a 16-byte boundary."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        n = 1
        for s in shape:
            n *= s
        buf = torch.randn(n + 1, generator=g).to(dtype).to(device)
        return buf[1:].view(*shape) if offset else buf[:n].view(*shape)

    x, x_next, v, v_ref = rnd(bsz, d), rnd(bsz, d), rnd(bsz, d), rnd(bsz, d)
    cx = torch.rand(bsz, generator=g).to(device)
    cv = torch.randn(bsz, generator=g).to(device)
    a = torch.randn(bsz, generator=g).to(device)
    b = torch.randn(bsz, generator=g).to(device)
    weight = {
        None: None,
        "D": torch.rand(d, generator=g).to(dtype).to(device),
        "BD": torch.rand(bsz, d, generator=g).to(dtype).to(device),
    }[weight_kind]
    return x, x_next, v, cx, cv, v_ref, weight, a, b


# --------------------------------------------------------------------------- references


def ref64_forward(logits, ids, inv_temp):
    """fp64 reference from the same fp32 z the kernels see; entropy ignores -inf entries."""
    z32 = logits.float() * inv_temp
    z = z32.double()
    lse = torch.logsumexp(z, -1)
    logp = z.gather(-1, ids[:, None]).squeeze(-1) - lse
    p = torch.exp(z - lse[:, None])
    pz = torch.where(p > 0, p * z, torch.zeros_like(z))
    return logp, lse, lse - pz.sum(-1)


def lse_of(parts):
    """lse_parts (N, 2) = [max z, log sum exp(z - max z)] -> the log-sum-exp, in fp64."""
    return parts[:, 0].double() + parts[:, 1].double()


def ref_forward_kept(logits, ids, inv_temp, want_entropy):
    """torch_backend's forward; a row with -inf logits is computed on its finite
    logits alone (torch_backend's entropy is NaN there: 0 * inf)."""
    out = [t.clone() if t is not None else None for t in ref.logprob_forward(logits, ids, inv_temp, want_entropy)]
    finite = torch.isfinite(logits.float())
    for r in (~finite).any(-1).nonzero().flatten().tolist():
        keep = logits[r][finite[r]][None]
        kid = finite[r, : ids[r]].sum().reshape(1)
        for dst, src in zip(out, ref.logprob_forward(keep, kid, inv_temp, want_entropy)):
            if dst is not None:
                dst[r] = src[0]
    return tuple(out)


# --------------------------------------------------------------------------- tolerances

# relative half-ulp (rounding) of each output dtype, doubled: one ulp
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def assert_close_fp32(actual, expected, scale, what, rel=8e-6):
    """|actual - expected| <= rel * scale elementwise (scale: the magnitude fp32 error is relative to)."""
    assert actual.dtype == torch.float32, what
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rel * scale + 1e-7, f"{what}: max error {err:.3g} > {rel * scale + 1e-7:.3g}"


def assert_grad_close(actual, expected, what):
    """Same dtype; elementwise within one ulp of the output dtype (+ fp32 noise of the largest element)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    a, e = actual.double(), expected.double()
    big = e.abs().max().item()
    tol = ULP[expected.dtype] * e.abs() + 1e-5 * big + 1e-30
    bad = (a - e).abs() > tol
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} elements off, worst {(a - e).abs().max().item():.3g} (max |grad| {big:.3g})")


def _finite_max_abs(logits) -> float:
    x = logits.float()
    x = x[torch.isfinite(x)]
    return float(x.abs().max()) if x.numel() else 0.0


class Fp64Bounds:
    """The native CPU kernels: fp32 accuracy against an fp64 reference (and
    torch_backend), relative to the largest |z|; gradients within one ulp of the
    output dtype. Both backends compute in fp32 from the same input, so forward
    outputs agree to fp32 accuracy and half-dtype gradients to about one ulp."""

    @staticmethod
    def forward(out, logits, ids, inv_temp, want_entropy, what=""):
        logp, parts, ent = out
        r_logp, r_parts, r_ent = ref.logprob_forward(logits, ids, inv_temp, want_entropy)
        e_logp, e_lse, e_ent = ref64_forward(logits, ids, inv_temp)
        scale = max(1.0, _finite_max_abs(logits) * inv_temp)
        z = logits.float() * inv_temp
        assert torch.equal(parts[:, 0], z.amax(-1)) or bool(z.isnan().any()), f"lse_parts[:, 0] is max z {what}"
        assert_close_fp32(lse_of(parts).float(), e_lse, scale, f"lse vs fp64 {what}")
        assert_close_fp32(logp, e_logp, scale, f"logp vs fp64 {what}")
        assert_close_fp32(lse_of(parts).float(), lse_of(r_parts), scale, f"lse vs torch_backend {what}")
        assert_close_fp32(logp, r_logp, scale, f"logp vs torch_backend {what}")
        if want_entropy:
            # log S + sum p (m - z) / S: accurate in absolute terms even for huge |z|
            assert_close_fp32(ent, e_ent, max(1.0, float(e_ent.abs().max())), f"entropy vs fp64 {what}", rel=2e-5)
            # torch_backend's entropy is NaN for rows with -inf logits (0 * inf), where the kernel stays finite
            ok = torch.isfinite(r_ent) | ~torch.isfinite(logits.float()).all(-1)
            assert ok.all()
            fin = torch.isfinite(r_ent)
            assert_close_fp32(ent[fin], r_ent[fin], scale, f"entropy vs torch_backend {what}", rel=2e-5)

    @staticmethod
    def backward(got, want, logits, inv_temp, what=""):
        assert_grad_close(got, want, f"grad {what}")

    @staticmethod
    def flow_sums(got, want, what=""):
        # fp32 error of a sum of non-negative terms is relative to the sum itself
        assert_close_fp32(got, want, want.abs().max().item(), what, rel=4e-6)

    @staticmethod
    def flow_grad(got, want, what=""):
        assert_grad_close(got, want, what)


# Outputs rounded to a 16-bit dtype may differ by 1-2 ulp.
def _out_tol(fp32_atol):
    return {
        torch.float32: (1e-5, fp32_atol),
        torch.float16: (2e-3, 1e-5),
        torch.bfloat16: (1.6e-2, 1e-4),
    }


@dataclass(frozen=True)
class TorchClose:
    """torch.testing.assert_close against torch_backend: (rtol, atol) per output;
    ``scaled``: every token-side atol is multiplied by 1 + max |z|."""

    logp: tuple
    lse: tuple
    ent: tuple
    out: dict  # dtype -> (rtol, atol) for outputs in a 16-bit or fp32 dtype (gradients)
    scaled: bool = False

    def scale(self, logits, inv_temp):
        return 1.0 + _finite_max_abs(logits) * inv_temp if self.scaled else 1.0

    def output_tol(self, dtype, scale=1.0):
        rtol, atol = self.out[dtype]
        return dict(rtol=rtol, atol=atol * scale)

    def forward(self, out, logits, ids, inv_temp, want_entropy, what=""):
        exp = ref_forward_kept(logits, ids, inv_temp, want_entropy)
        s = self.scale(logits, inv_temp)
        pairs = [("logp", out[0], exp[0], self.logp), ("lse", out[1], exp[1], self.lse)]
        if want_entropy:
            pairs.append(("entropy", out[2], exp[2], self.ent))
        for label, got, want, (rtol, atol) in pairs:
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol * s, msg=lambda m: f"{label} {what}: {m}")

    def backward(self, got, want, logits, inv_temp, what=""):
        tol = self.output_tol(logits.dtype, self.scale(logits, inv_temp))
        torch.testing.assert_close(got.float(), want.float(), **tol, msg=lambda m: f"grad {what}: {m}")

    def flow_sums(self, got, want, what=""):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")

    def flow_grad(self, got, want, what=""):
        tol = self.output_tol(got.dtype)
        tol["atol"] = max(tol["atol"], 1e-5)
        torch.testing.assert_close(got.float(), want.float(), **tol, msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------- backends


@functools.lru_cache(maxsize=1)
def interp_bf16_ok() -> bool:
    """Whether this triton's CPU interpreter handles bf16 loads (numpy has no bf16)."""
    if CUDA:
        return True
    try:
        import triton
        import triton.language as tl

        @triton.jit
        def _copy(src, dst, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(dst + offs, tl.load(src + offs).to(tl.float32) * 2.0)

        src = torch.tensor([1.5, -2.25, 3.0, 0.5], dtype=torch.bfloat16)
        dst = torch.empty(4)
        _copy[(1,)](src, dst, BLOCK=4)
        return torch.equal(dst, src.float() * 2)
    except Exception:
        return False


@dataclass(frozen=True, eq=False)
class Backend:
    """One backend module on one device, and the accuracy it is held to."""

    id: str  # test id: native-cpu, native-cpu-x86-64-v3, native-cpu-baseline, triton, native-cuda
    module_name: str  # under unigrpo.ops.backends
    device: str
    tol: object  # Fp64Bounds or TorchClose
    marks: tuple = ()  # pytest marks of all its cases
    isa: str | None = None  # native CPU: run at this ISA level (None: the one picked at load)

    def __str__(self):
        return self.id

    @property
    def family(self) -> str:
        """The id without the ISA level: which shape tables and accuracy apply."""
        return "native-cpu" if self.isa else self.id

    @property
    def mod(self):
        return importlib.import_module(f"unigrpo.ops.backends.{self.module_name}")

    @property
    def dev(self) -> torch.device:
        return torch.device(self.device)

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def dtypes(self) -> list:
        if self.module_name == "triton" and not self.gpu:
            return [torch.float32, torch.float16] + ([torch.bfloat16] if interp_bf16_ok() else [])
        return [torch.float32, torch.float16, torch.bfloat16]

    def require(self):
        """Skips the calling test where this backend cannot run here; fails where it should.
        A lower native CPU level is switched on here (``isa_level`` switches it back)."""
        if self.gpu and not CUDA:
            pytest.skip("needs CUDA")
        if self.module_name in backends_for(self.device):
            if self.isa:
                try:
                    self.mod._C.set_cpu_isa(self.isa)
                except ValueError as e:  # not built here, or this CPU lacks it
                    pytest.skip(str(e))
            return
        why = getattr(self.mod, "load_error", None)
        if self.id == "native-cuda" and not os.environ.get("UNIGRPO_SKIP_CUDA"):
            pytest.fail(f"a GPU is present but the native CUDA kernels are unavailable: {why}")
        pytest.skip(f"{self.id} backend unavailable: {why}")


NATIVE_CPU = Backend("native-cpu", "native", "cpu", Fp64Bounds())
TRITON = Backend(
    "triton", "triton", "cuda" if CUDA else "cpu",
    TorchClose(logp=(1e-5, 2e-5), lse=(1e-6, 1e-5), ent=(1e-5, 1e-5), out=_out_tol(5e-6)),
    marks=(pytest.mark.cuda,) if CUDA else ())
NATIVE_CUDA = Backend(
    "native-cuda", "native", "cuda",
    # the kernels centre on the max; atol grows with |z| (lse's own rounding is ~ eps |z|)
    TorchClose(logp=(1e-5, 2e-6), lse=(1e-5, 2e-6), ent=(1e-5, 2e-6), out=_out_tol(1e-6), scaled=True),
    marks=(pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs CUDA")))
# the same CPU kernels at the lower ISA levels this machine can also run (csrc/common.h)
NATIVE_CPU_LEVELS = tuple(Backend(f"native-cpu-{level}", "native", "cpu", Fp64Bounds(), isa=level)
                          for level in ("x86-64-v3", "baseline"))
BACKENDS = (NATIVE_CPU, *NATIVE_CPU_LEVELS, TRITON, NATIVE_CUDA)


@contextlib.contextmanager
def isa_level(be):
    """Runs the block with ``be``'s native CPU ISA level, and restores the one before."""
    if not be.isa:
        yield
        return
    native = be.mod
    before = native._C.cpu_isa()
    try:
        yield
    finally:
        native._C.set_cpu_isa(before)


def _id(x) -> str:
    if isinstance(x, torch.dtype):
        return str(x).removeprefix("torch.")
    if isinstance(x, tuple) and all(isinstance(i, int) for i in x):
        return "x".join(map(str, x))
    return str(x)


def per_backend(cases_for, backends=BACKENDS):
    """pytest params (backend, *case) for each backend; ``cases_for(backend)`` gives
    its cases (tuples or single values), or a string: why it has none here. A GPU
    backend on a machine without one gets a single skipped param."""
    params = []
    for be in backends:
        cases = "needs CUDA" if be.gpu and not CUDA else cases_for(be)
        if isinstance(cases, str):
            params.append(pytest.param(be, *([None] * _case_width(cases_for)), id=f"{be.id}-skipped",
                                       marks=(*be.marks, pytest.mark.skip(reason=cases))))
            continue
        for case in cases:
            case = case if isinstance(case, tuple) else (case,)
            params.append(pytest.param(be, *case, id="-".join(_id(x) for x in (be, *case)), marks=be.marks))
    return params


def _case_width(cases_for) -> int:
    """How many values a case of ``cases_for`` has."""
    for be in BACKENDS:
        cases = cases_for(be)
        if not isinstance(cases, str) and cases:
            return len(cases[0]) if isinstance(cases[0], tuple) else 1
    raise ValueError("no backend has a case")


# --------------------------------------------------------------------------- checks


def check_forward(be, logits, ids, inv_temp, want_entropy, what=""):
    """The backend's forward: output shapes and dtypes, values at its accuracy."""
    n = logits.shape[0]
    out = be.mod.logprob_forward(logits, ids, inv_temp, want_entropy)
    for got in (out[0],) + (out[2:] if want_entropy else ()):
        assert got is not None and got.dtype == torch.float32 and got.shape == (n,), what
    assert out[1].dtype == torch.float32 and out[1].shape == (n, 2), what  # lse_parts
    if not want_entropy:
        assert out[2] is None
    be.tol.forward(out, logits, ids, inv_temp, want_entropy, what)
    return out


def check_backward(be, logits, ids, inv_temp, with_entropy, fwd=None, seed=1, what=""):
    """The backend's backward from its own forward's lse_parts / entropy, against torch_backend's on the same."""
    n, v = logits.shape
    _, lse, ent = fwd if fwd is not None else be.mod.logprob_forward(logits, ids, inv_temp, with_entropy)
    g = torch.Generator().manual_seed(seed)
    grad_logp = torch.randn(n, generator=g).to(be.dev)
    grad_ent = torch.randn(n, generator=g).to(be.dev) if with_entropy else None
    ent = ent if with_entropy else None
    got = be.mod.logprob_backward(logits, ids, lse, inv_temp, grad_logp, grad_ent, ent)
    want = ref.logprob_backward(logits, ids, lse, inv_temp, grad_logp, grad_ent, ent)
    assert got.dtype == logits.dtype and got.shape == (n, v) and got.is_contiguous(), what
    be.tol.backward(got, want, logits, inv_temp, what)
    return got


def check_token(be, logits, ids, inv_temp, want_entropy, what=""):
    """Forward, then backward from it; returns (logp, lse_parts, entropy, grad)."""
    out = check_forward(be, logits, ids, inv_temp, want_entropy, what)
    return (*out, check_backward(be, logits, ids, inv_temp, want_entropy, fwd=out, what=what))
