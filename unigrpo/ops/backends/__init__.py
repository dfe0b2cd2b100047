"""Kernel backends behind ``unigrpo.ops``.

Every backend module (``torch_backend``, ``native``, ``triton``) implements the
same four raw, autograd-free functions. The public ops in ``unigrpo.ops`` build
every op (forward and backward) from these four, so a backend is only these
kernels; validation, autograd and the O(N)/O(B) per-row epilogues live once, in
``unigrpo.ops``. Inputs reach a backend already validated: right devices, ids in
[0, V), contiguous rows (logits may have a row stride > V), fp32 per-row vectors.

Token side (logits: (N, V) fp32/fp16/bf16, ids: (N,) int64, math in fp32):

  logprob_forward(logits, ids, inv_temp, want_entropy)
      z = logits.float() * inv_temp; m = max(z), s = sum exp(z - m)
      -> logp = (z[ids] - m) - log(s), lse_parts = [m, log(s)] (the log-sum-exp
      lse = m + log(s), kept as its two parts), entropy = sum(softmax(z) * (lse - z)) or None.
      Working from (z - m), never from z - lse, keeps logp and the gradient exact to
      fp32 whatever |z| (lse rounded to fp32 carries an error of ~|z| * 6e-8).
      logp, entropy (N,) fp32, lse_parts (N, 2) fp32; one online pass over V, nothing
      (N, V) allocated.
      Compute the entropy without cancellation: with running max m and
      s = sum exp(z - m), keep u = sum exp(z - m) * (m - z) >= 0 (rescaled as
      u <- exp(m - m') * (u + s * (m' - m)) when the max moves to m'); then
      entropy = log(s) + u / s. (lse - sum(p z) loses ~|z| * 1e-7 to cancellation.)

  logprob_backward(logits, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy)
      d = (z - m) - log(s) (from lse_parts), p = exp(d)
      grad = inv_temp * (grad_logp * (onehot(ids) - p)
                         - grad_entropy * p * (d + entropy))
      -> (N, V) contiguous, dtype of logits. grad_entropy/entropy may be None.

Image side (x, x_next, v, v_ref: (B, D), one dtype among fp32/fp16/bf16;
weight: None, (D,) or (B, D) of that dtype; cx, cv, a, b: (B,) fp32):

  sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, want_s1, want_s2)
      s1[b] = sum_d (x_next - cx[b] * x - cv[b] * v)^2        if want_s1
      s2[b] = sum_d w * (v - v_ref)^2   (w = 1 without weight) if want_s2
      -> (s1 or None, s2 or None), (B,) fp32. Tensors a term does not use may be None.

  sde_row_grad(x, x_next, v, cx, cv, v_ref, weight, a, b)
      grad[b, d] = a[b] * (x_next - cx[b] * x - cv[b] * v) + b[b] * w * (v - v_ref)
      -> (B, D), dtype of v. a is None -> first term absent; b is None -> second.

The SDE-step log-likelihood, velocity MSE and the FlowGRPO step loss are all
"per-row sums forward, per-row affine combination backward", which is why two
kernels serve all of them (see unigrpo/ops/sde.py).
"""
