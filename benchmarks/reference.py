"""Plain reference implementations of the CCMC maximum-likelihood estimator, for the benchmark.

Both minimise the same objective as ``ccmc_jax.fit.fit_scores`` (paper Sec. 3):

    l(A) = -(1/n) sum_t [A[q_t, y_t] - log sum_j m_{t,j} exp(A[q_t, j])] + (ridge/2) ||A||_F^2

on the first ``n`` samples of a data set (counts ``m_t``, query ``q_t``, answer ``y_t``), but the
way code is usually first written: one trial and one ``n`` at a time.

* :func:`fit_scipy` -- NumPy float64, ``scipy.optimize.minimize(method='L-BFGS-B')`` with the
  analytic gradient ``(1/n) sum_t e_{q_t} (pi_t - e_{y_t})^T + ridge A``.
* :func:`fit_jax_loop` -- JAX without vmap: a Python loop over optax L-BFGS steps, each step a
  jitted call on this trial's unpadded data (so every new ``n`` compiles again).
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.optimize


def _np_objective(flat, log_m, q, Y, ridge):
  """NLL and gradient in NumPy (float64), vectorised over samples."""
  K = log_m.shape[1]
  A = flat.reshape(K, K)
  Aq = A[q]
  logits = Aq + log_m
  top = logits.max(axis=1, keepdims=True)
  e = np.exp(logits - top)
  total = e.sum(axis=1, keepdims=True)
  n = len(q)
  lse = top[:, 0] + np.log(total[:, 0])
  loss = (lse.sum() - Aq[Y].sum()) / n + 0.5 * ridge * np.sum(A * A)
  resid = e / total - Y
  grad = np.zeros((K, K))
  np.add.at(grad, q, resid)
  return loss, (grad / n + ridge * A).ravel()


def fit_scipy(counts, query, y, n, K, ridge=1e-6, gtol=1e-7):
  """MLE scores (row-centred) from the first ``n`` samples by SciPy L-BFGS-B. Returns (A, nfev)."""
  counts, q, yy = np.asarray(counts[:n], np.float64), np.asarray(query[:n]), np.asarray(y[:n])
  with np.errstate(divide='ignore'):
    log_m = np.log(counts)  # -inf on absent tokens: they get probability exactly 0
  Y = np.zeros((n, K), bool)
  Y[np.arange(n), yy] = True
  res = scipy.optimize.minimize(_np_objective, np.zeros(K * K), args=(log_m, q, Y, ridge),
                                jac=True, method='L-BFGS-B',
                                options={'gtol': gtol, 'ftol': 1e-15, 'maxiter': 2000})
  A = res.x.reshape(K, K)
  return A - A.mean(axis=1, keepdims=True), res.nfev


@functools.lru_cache(maxsize=None)
def _jax_step(K, ridge):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  opt = optax.lbfgs()

  def loss(A, log_m, q, y):
    logits = A[q] + log_m
    return (jnp.mean(jax.nn.logsumexp(logits, axis=1) - A[q, y])
            + 0.5 * ridge * jnp.sum(A * A))

  @jax.jit
  def step(A, state, log_m, q, y):
    fun = lambda B: loss(B, log_m, q, y)
    value, grad = optax.value_and_grad_from_state(fun)(A, state=state)
    updates, state = opt.update(grad, state, A, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(A, updates), state, jnp.abs(grad).max()

  return opt, step


def fit_jax_loop(counts, query, y, n, K, ridge=1e-6, gtol=1e-6, max_steps=1000):
  """MLE scores (row-centred) by a Python loop of jitted optax L-BFGS steps. Returns (A, steps)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  opt, step = _jax_step(K, ridge)
  counts = jnp.asarray(counts[:n], jnp.float32)
  log_m = jnp.where(counts > 0, jnp.log(jnp.where(counts > 0, counts, 1.0)), -jnp.inf)
  q, yy = jnp.asarray(query[:n]), jnp.asarray(y[:n])
  A = jnp.zeros((K, K), jnp.float32)
  state = opt.init(A)
  for it in range(1, max_steps + 1):
    A, state, gmax = step(A, state, log_m, q, yy)
    if float(gmax) < gtol:  # a host round-trip per step: what plain code does
      break
  A = np.asarray(A, np.float64)
  return A - A.mean(axis=1, keepdims=True), it
