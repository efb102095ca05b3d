"""Theory: asymptotic MLE error prediction (paper Sec. 3; derived in ``docs/theory.md`` Sec. 4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import checks
from ccmc_jax import fit
from ccmc_jax.sampling import Dataset


def softmax_jacobian(p):
  """``J = diag(p) - p p^T``: the Jacobian of ``softmax`` at probabilities ``p`` (..., K)."""
  return jnp.einsum('...i,ij->...ij', p, jnp.eye(p.shape[-1])) - p[..., :, None] * p[..., None, :]


def _pinv_psd(F, rcond=1e-6):
  """Pseudo-inverse of a symmetric PSD matrix (eigenvalues below ``rcond * max`` dropped)."""
  vals, vecs = jnp.linalg.eigh(F)
  keep = vals > rcond * jnp.maximum(vals.max(), 1e-30)
  inv = jnp.where(keep, 1.0 / jnp.where(keep, vals, 1.0), 0.0)
  return (vecs * inv) @ vecs.T


def fisher_information(A, mc_data: Dataset, K, capacity, chunked=False):
  """Per-row Fisher information ``F_k = E[1{x_L = k} (diag pi^X - pi^X pi^X^T)]`` at ``A``.

  Estimated by Monte Carlo over the prompts of ``mc_data`` (answers are not used).
  Returns (K, K, K); ``F[k]`` is the Hessian of row k's expected NLL at the truth.
  ``chunked``: sum over chunks of ``fit.CHUNK`` prompts (``fit.row_hessian``'s ``slots``; for a
  ``capacity`` that is a multiple of ``fit.CHUNK`` above it, else one sum): the same numbers
  whatever the CPU thread count, and closer to the exact sum in float32 (one long sum can
  leave the gauge null eigenvalue above ``_pinv_psd``'s cut-off: up to 5e-3 relative error in
  ``predicted_error`` at K = 5, 50000 prompts, against 4e-7 chunked).
  """
  g, _ = fit.group_by_query(mc_data, K, capacity)
  slots = capacity if chunked else None
  return jax.vmap(fit.row_hessian, in_axes=(0, 0, 0, 0, None))(
      A, g.log_m, g.weight, g.answer_freq, slots)


def predicted_error(A, mc_data: Dataset, K, capacity, n, chunked=False):
  """Asymptotic ``E||P_hat - P*||_F^2 ~= (1/n) sum_k tr(J_k F_k^+ J_k)``.

  Args:
    A: (K, K) true scores.
    mc_data: Monte-Carlo prompts from the sampling distribution (large, e.g. 2e5).
    K: vocabulary size; capacity: per-row capacity for ``mc_data``.
    n: sample size(s); scalar or array.
    chunked: as in :func:`fisher_information`.
  Returns:
    the predicted squared error at each ``n``.
  Raises:
    ValueError: ``A`` not (K, K), ``mc_data`` not over ``K`` tokens, ``capacity`` not an int
      >= 1 (always); called eagerly, NaN or ``+inf`` in ``A``, ids out of range, ``n`` not > 0
      (under ``jit``: NaN in, NaN out).
  References: standard MLE asymptotics (delta method through the softmax); ``docs/theory.md``
    Sec. 4.
  """
  K = checks.size('K', K)
  checks.same('A', checks.square('A', A), K, 'K rows and columns: K =')
  checks.no_nan('A', A)
  checks.dataset(mc_data, K, 'mc_data')
  checks.size('capacity', capacity)
  checks.positive('n', n)
  F = fisher_information(A, mc_data, K, capacity, chunked)
  J = softmax_jacobian(jax.nn.softmax(A, axis=-1))
  per_row = jax.vmap(lambda j, f: jnp.trace(j @ _pinv_psd(f) @ j))(J, F)
  return per_row.sum() / jnp.asarray(n, jnp.float32)


def _uniform_row_traces(A, k, L, cross, step, t_lo, t_hi):
  """``tr(J_k H_k^+ J_k)`` for rows ``A`` (B, K) of queries ``k`` (B,), uniform prompts (float64).

  ``H_k = E[diag pi - pi pi^T | x_L = k]`` is diagonal minus low rank: with ``c`` IID uniform
  context keys, ``Z = beta + sum_l u_{x_l}`` (``u = exp(A[k])``, ``beta = u_k`` for self-attention,
  0 for cross) and ``1/Z = int_0^inf e^{-tZ} dt``, ``1/Z^2 = int_0^inf t e^{-tZ} dt``, every
  moment ``E[m_i m_j e^{-tZ}]`` factorises over the positions through
  ``phi(t) = mean_j e^{-t u_j}``. A trapezoid rule in ``log t`` (``Q`` nodes, exponentially
  accurate) turns ``E[pi pi^T]`` into a diagonal plus ``Q`` rank-one terms (plus rank 2 for the
  query's own key), so ``H + tau 11^T`` is inverted by the Woodbury identity in O(K Q^2).
  """
  B, K = A.shape
  c = L - 1
  u = np.exp(A - A.max(axis=1, keepdims=True))
  p = u / u.sum(axis=1, keepdims=True)
  s = np.arange(np.log(t_lo), np.log(t_hi) + step, step)
  t = np.exp(s)
  omega = step * t  # dt = t ds
  E = np.exp(-t[None, :, None] * u[:, None, :])  # (B, Q, K)
  phi = E.mean(axis=-1)  # (B, Q)
  rows = np.arange(B)
  beta = np.zeros(B) if cross else u[rows, k]
  eb = np.exp(-t[None, :] * beta[:, None])
  a1 = omega * eb * phi ** (c - 1)
  a2 = a1 * t
  d = (c / K) * u * np.einsum('bq,bqk->bk', a1, E)
  cdiag = (c / K) * u * u * np.einsum('bq,bqk->bk', a2, E)
  delta = d - cdiag
  cols, n_low = [], 0
  if c >= 2:
    V = np.sqrt(omega * t * eb * (c * (c - 1) / K**2) * phi ** (c - 2))[:, :, None] * u[:, None, :]
    V = V * E  # (B, Q, K), subtracted: S = -I
    # Nodes whose rank-one term is negligible against the diagonal (far tails of t) are dropped.
    weight = np.max(np.sum(V * V / delta[:, None, :], axis=-1), axis=0)
    V = V[:, weight > 1e-14 * weight.max()]
    n_low = V.shape[1]
    cols.append(np.swapaxes(V, 1, 2))
  if not cross:
    d_self = u[rows, k] * np.einsum('bq,bq->b', omega * eb, phi ** c)
    delta[rows, k] += d_self
    w = (c / K) * u[rows, k][:, None] * u * np.einsum('bq,bqk->bk', a2, E)
    gamma = u[rows, k] ** 2 * np.einsum('bq,bq->b', omega * t * eb, phi ** c)
    e_k = np.zeros((B, K))
    e_k[rows, k] = 1.0
    cols.append(np.stack([e_k, w], axis=-1))
  tau = delta.mean(axis=1) / K  # gauge term tau 11^T: its eigenvalue tau K ~ mean(delta)
  cols.append(np.sqrt(tau)[:, None, None] * np.ones((B, K, 1)))
  U = np.concatenate(cols, axis=-1)  # (B, K, r)
  r = U.shape[-1]
  Sinv = np.zeros((B, r, r))
  Sinv[:, np.arange(n_low), np.arange(n_low)] = -1.0
  if not cross:
    # -(e_k w^T + w e_k^T + gamma e_k e_k^T) = [e_k, w] S [e_k, w]^T, S = -[[gamma, 1], [1, 0]].
    i = r - 3
    Sinv[:, i, i + 1] = Sinv[:, i + 1, i] = -1.0
    Sinv[:, i + 1, i + 1] = gamma
  Sinv[:, -1, -1] = 1.0
  Ut = U / delta[:, :, None]
  UtT = np.ascontiguousarray(np.swapaxes(Ut, 1, 2))  # contiguous: numpy's batched BLAS path
  M = Sinv + UtT @ U
  # J^2 = diag(p^2) + [p^2, p] G [p^2, p]^T with G = [[0, -1], [-1, p.p]].
  p2 = p * p
  pp = p2.sum(axis=1)
  R_diag = -2.0 * p2 * p + pp[:, None] * p2
  tr0 = np.sum((p2 + R_diag) / delta, axis=1)
  X = UtT @ (p2[:, :, None] * Ut)
  Bm = np.stack([p2, p], axis=-1)  # (B, K, 2)
  G = np.zeros((B, 2, 2))
  G[:, 0, 1] = G[:, 1, 0] = -1.0
  G[:, 1, 1] = pp
  UB = UtT @ Bm  # (B, r, 2)
  X = X + UB @ G @ np.ascontiguousarray(np.swapaxes(UB, 1, 2))
  return tr0 - np.trace(np.linalg.solve(M, X), axis1=1, axis2=2)


def predicted_error_uniform(A, L, n, cross=False, step=0.5, row_block=64):
  """Asymptotic ``E||P_hat - P*||_F^2 ~= (1/n) sum_k tr(J_k F_k^+ J_k)`` for uniform prompts,
  at vocabulary scale: exact up to a quadrature (relative error ~1e-8 at ``step = 0.5``), no
  Monte Carlo, O(K^2 Q^2) work and O(K^2 Q) memory per block of rows (``Q`` ~ 50 nodes).

  For IID uniform prompts ``F_k = H_k / K`` with ``H_k = E[diag pi^X - pi^X pi^X^T | x_L = k]``,
  computed from ``A`` by :func:`_uniform_row_traces`. Same quantity as :func:`predicted_error`
  (which estimates ``F_k`` from Monte-Carlo prompts and forms K x K x K arrays).

  Args:
    A: (K, K) finite true scores.
    L: prompt length, an int >= 2 (>= 3 with ``cross``: with a single key the answer is that
      key, no information).
    n: sample size(s); scalar or array.
    cross: cross-attention (the query is not a key).
    step: quadrature step in ``log t``.
    row_block: rows per block (memory ~ row_block * K * Q doubles).
  Returns:
    the predicted squared error at each ``n`` (float64 numpy).
  References: standard MLE asymptotics (delta method through the softmax), paper Sec. 3;
    docs/theory.md.
  """
  checks.square('A', A)
  checks.no_nan('A', A, neg_inf=False)
  A = np.asarray(A, np.float64)
  if isinstance(L, (bool, np.bool_)) or not isinstance(L, (int, np.integer)) or (
      L < 2 + bool(cross)):
    raise ValueError(f'L must be >= {2 + bool(cross)}{" for cross-attention" if cross else ""}'
                     f' (an integer; with a single key the answer is that key: no '
                     f'information), got {L!r}')
  checks.positive('n', n)
  checks.number('step', step, 0, lo_open=True)
  row_block = checks.size('row_block', row_block)
  K = A.shape[0]
  u_min = np.exp((A - A.max(axis=1, keepdims=True)).min())
  # 1/Z over Z in [u_min, L]: the integrands are negligible below t = 1e-6/L and beyond
  # t = 40/u_min (relative error < e^-40 there).
  total = 0.0
  for start in range(0, K, row_block):
    rows = np.arange(start, min(start + row_block, K))
    total += _uniform_row_traces(A[rows], rows, L, cross, step, 1e-6 / L, 40.0 / u_min).sum()
  return K * total / np.asarray(n, np.float64)
