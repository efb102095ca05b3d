"""Theory: asymptotic MLE error prediction (paper Sec. 3; derived in ``docs/theory.md`` Sec. 4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

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


def fisher_information(A, mc_data: Dataset, K, capacity):
  """Per-row Fisher information ``F_k = E[1{x_L = k} (diag pi^X - pi^X pi^X^T)]`` at ``A``.

  Estimated by Monte Carlo over the prompts of ``mc_data`` (answers are not used).
  Returns (K, K, K); ``F[k]`` is the Hessian of row k's expected NLL at the truth.
  """
  g, _ = fit.group_by_query(mc_data, K, capacity)
  return jax.vmap(fit.row_hessian)(A, g.log_m, g.weight, g.answer_freq)


def predicted_error(A, mc_data: Dataset, K, capacity, n):
  """Asymptotic ``E||P_hat - P*||_F^2 ~= (1/n) sum_k tr(J_k F_k^+ J_k)``.

  Args:
    A: (K, K) true scores.
    mc_data: Monte-Carlo prompts from the sampling distribution (large, e.g. 2e5).
    K: vocabulary size; capacity: per-row capacity for ``mc_data``.
    n: sample size(s); scalar or array.
  Returns:
    the predicted squared error at each ``n``.
  References: standard MLE asymptotics (delta method through the softmax); ``docs/theory.md``
    Sec. 4.
  """
  F = fisher_information(A, mc_data, K, capacity)
  J = softmax_jacobian(jax.nn.softmax(A, axis=-1))
  per_row = jax.vmap(lambda j, f: jnp.trace(j @ _pinv_psd(f) @ j))(J, F)
  return per_row.sum() / jnp.asarray(n, jnp.float32)
