"""Maximum-likelihood scores from prompts stored as token ids: the MLE at vocabulary scale.

A sample is a prompt of token ids ``X`` (the query ``q = x_L`` is its last entry) and an answer
``y``. The likelihood needs no count vector (paper Lemma 2.2):
``log sum_j m_j(X) e^{A[q, j]} = logsumexp_l A[q, x_l]`` over the key positions ``l`` (all ``L``
for self-attention, the first ``L - 1`` for cross-attention), so the objective of
:func:`ccmc_jax.fit.fit_scores`,

    l(A) = (1/n) sum_t [ logsumexp_l A[q_t, x_{t,l}] - A[q_t, y_t] ] + (ridge/2) ||A||_F^2,

and its gradient ``(1/n) sum_t sum_l s_{t,l} e_{q_t x_{t,l}} - b + ridge A`` (``s_t`` the
softmax over positions, ``b`` the answer frequencies; a scatter-add over positions) cost O(nL)
per pass, never O(nK); memory is O(nL + K^2).

:func:`fit_mle` is the entry point. Its large-K solver ('cg') is a nonlinear conjugate gradient
on all K row problems at once, preconditioned by the Hessian diagonal, with an exact per-row line
search (a few 1-D Newton steps on the positions' scores, no extra pass over the tokens); for
small K it hands the data to the dense batched Newton of :mod:`ccmc_jax.fit` ('newton').
"""
from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import fit
from ccmc_jax import model
from ccmc_jax.fit import FitResult
from ccmc_jax.sampling import Dataset

MAX_K = 46340  # K^2 flat (row, token) indices must fit in int32
METHODS = ('auto', 'newton', 'cg')


def key_positions(prompts, cross=False):
  """The key tokens of each prompt: all ``L`` positions, or the first ``L - 1`` for cross."""
  return prompts[:, :-1] if cross else prompts


def nll(A, prompts, answers, cross=False, ridge=0.0):
  """The objective ``l(A)`` on token ids (mean NLL over the samples + ``(ridge/2)||A||^2``).

  Args:
    A: (K, K) scores.
    prompts: (n, L) int token ids; the query is the last column.
    answers: (n,) int next tokens.
    cross: cross-attention (the query is not a key).
    ridge: ridge weight.
  Returns:
    scalar; equal to :func:`ccmc_jax.fit.nll` on the same samples as counts.
  References: paper Lemma 2.2, Sec. 3 (convex MLE).
  """
  q = prompts[:, -1]
  z = A[q[:, None], key_positions(prompts, cross)]
  return (jnp.mean(jax.nn.logsumexp(z, axis=-1) - A[q, answers])
          + 0.5 * ridge * jnp.sum(A * A))


def nll_grad(A, prompts, answers, cross=False, ridge=0.0):
  """``(l(A), grad l(A))`` by one gather and one scatter-add over the key positions.

  The gradient is ``(1/n) sum_t sum_l s_{t,l} e_{q_t} e_{x_{t,l}}^T - b + ridge A`` with
  ``s_t = softmax_l A[q_t, x_{t,l}]`` and ``b[k, j]`` the frequency of (query k, answer j).
  """
  K = A.shape[-1]
  n = prompts.shape[0]
  q = prompts[:, -1]
  idx = q[:, None] * K + key_positions(prompts, cross)
  z = A.reshape(-1)[idx]
  lse = jax.nn.logsumexp(z, axis=-1)
  s = jnp.exp(z - lse[:, None])
  expected = jnp.zeros(K * K, A.dtype).at[idx].add(s / n).reshape(K, K)
  b = jnp.zeros(K * K, A.dtype).at[q * K + answers].add(1.0 / n).reshape(K, K)
  loss = jnp.mean(lse - A[q, answers]) + 0.5 * ridge * jnp.sum(A * A)
  return loss, expected - b + ridge * A


def _segment_sum(x, q, K):
  """Per-row sums ``sum_{t: q_t = k} x_t`` of per-sample values x (n, ...)."""
  return jnp.zeros((K,) + x.shape[1:], x.dtype).at[q].add(x)


def _softmax_stats(z, v):
  """Per sample: ``s = softmax(z)`` over positions, ``E_s[v]`` and ``Var_s[v]``."""
  top = jnp.max(z, axis=-1, keepdims=True)
  e = jnp.exp(z - top)
  s = e / jnp.sum(e, axis=-1, keepdims=True)
  mean = jnp.sum(s * v, axis=-1)
  var = jnp.sum(s * v * v, axis=-1) - mean * mean
  return s, mean, jnp.maximum(var, 0.0)


def _cg_solve(prompts, answers, K, cross, ridge, tol, max_iter, line_steps=2):
  """Preconditioned nonlinear CG (Polak-Ribiere+) on all rows; returns (A_hat, iters, decrement).

  State per iteration: the scores ``z = A[q, x]`` of every key position (kept up to date by the
  line search, so the only passes over the tokens are one gather of the direction and one
  scatter-add of the gradient and Hessian diagonal).
  """
  n = prompts.shape[0]
  w = jnp.float32(1.0 / n)
  q = prompts[:, -1]
  idx = q[:, None] * K + key_positions(prompts, cross)
  Lk = idx.shape[1]
  flat = K * K
  b = jnp.zeros(flat, jnp.float32).at[q * K + answers].add(w).reshape(K, K)
  appear = jnp.zeros(flat, jnp.float32).at[idx].add(1.0).reshape(K, K)
  # Moment start: log(answers / exposure) with exposure = appearances / (keys per prompt),
  # smoothed; 0 for tokens never in a row's prompts (their optimum with a ridge).
  A = jnp.log((b * n + 0.5) / (appear / Lk + 0.5))
  A = A - A.mean(axis=1, keepdims=True)
  z = A.reshape(-1)[idx]

  def gradient(A, z):
    top = jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(z - top)
    s = e / jnp.sum(e, axis=-1, keepdims=True)
    both = jnp.zeros((flat, 2), jnp.float32).at[idx].add(jnp.stack([s, s - s * s], -1) * w)
    g = both[:, 0].reshape(K, K) - b + ridge * A
    # The diagonal floor (a millionth of one sample's curvature) keeps the preconditioned step
    # finite for a token whose softmax weight rounds to 1 (ridge = 0, scores far apart).
    D = jnp.maximum(both[:, 1].reshape(K, K) + ridge, 1e-6 * w)
    y = g / D
    y = y - y.mean(axis=1, keepdims=True)  # stay in the gauge subspace (zero row means)
    return s, g, y

  def line_search(A, z, s, g, p):
    """Per-row alpha minimising l(A + alpha p) along p: 1-D Newton steps from 0."""
    v = p.reshape(-1)[idx]
    pp = jnp.sum(p * p, axis=1)
    bp = jnp.sum(b * p, axis=1)
    ap = jnp.sum(A * p, axis=1)
    mean = jnp.sum(s * v, axis=-1)
    var = jnp.maximum(jnp.sum(s * v * v, axis=-1) - mean * mean, 0.0)
    d2 = w * _segment_sum(var, q, K) + ridge * pp
    d1 = jnp.sum(g * p, axis=1)
    alpha = jnp.where(d2 > 0, -d1 / jnp.where(d2 > 0, d2, 1.0), 0.0)
    for _ in range(line_steps - 1):
      _, mean, var = _softmax_stats(z + alpha[q][:, None] * v, v)
      stats = w * _segment_sum(jnp.stack([mean, var], -1), q, K)
      d1 = stats[:, 0] - bp + ridge * (ap + alpha * pp)
      d2 = stats[:, 1] + ridge * pp
      step = jnp.where(d2 > 0, -d1 / jnp.where(d2 > 0, d2, 1.0), 0.0)
      alpha = jnp.clip(alpha + step, 0.25 * alpha, 4.0 * alpha)
    return alpha, z + alpha[q][:, None] * v

  def body(state):
    A, z, s, g, y, p, gy, it, _ = state
    alpha, z = line_search(A, z, s, g, p)
    A = A + alpha[:, None] * p
    s, g_new, y_new = gradient(A, z)
    gy_new = jnp.sum(g_new * y_new, axis=1)
    beta = jnp.maximum((gy_new - jnp.sum(g_new * y, axis=1)) / jnp.maximum(gy, 1e-38), 0.0)
    p = -y_new + beta[:, None] * p
    descent = jnp.sum(g_new * p, axis=1) < 0
    p = jnp.where(descent[:, None], p, -y_new)  # restart a row when p is not downhill
    return A, z, s, g_new, y_new, p, gy_new, it + 1, n * gy_new

  def cond(state):
    return (state[7] < max_iter) & (jnp.max(state[8]) >= tol)

  s, g, y = gradient(A, z)
  gy = jnp.sum(g * y, axis=1)
  init = (A, z, s, g, y, -y, gy, jnp.int32(0), n * gy)
  A, *_, it, dec = jax.lax.while_loop(cond, body, init)
  return A - A.mean(axis=1, keepdims=True), it, dec


_cg_fit = jax.jit(_cg_solve, static_argnames=('K', 'cross', 'line_steps'))


@functools.partial(jax.jit, static_argnames=('K', 'capacity', 'cross', 'max_iter'))
def _newton_fit(prompts, answers, K, capacity, cross, ridge, tol, max_iter):
  """The dense batched Newton of :func:`ccmc_jax.fit.fit_scores` on ids (counts built here)."""
  data = Dataset(prompts[:, -1], model.token_counts(prompts, K, cross), answers)
  return fit.fit_scores(data, K, capacity, ridge=ridge, tol=tol, max_iter=max_iter)


# Measured crossover (python -m benchmarks.large_k, part c: L = 10, n = 1e5, 2 CPU cores, warm):
# Newton 0.03 s vs CG 0.06 s at K = 8, 0.07 vs 0.05 s at K = 16, 0.93 vs 0.10 s at K = 128.
# Its (n, K) counts and (K, C, K) grouped copy also cap Newton at NEWTON_MAX_NK floats.
NEWTON_MAX_K = 8
NEWTON_MAX_NK = 2**26


def choose_method(K, n):
  """The solver ``method='auto'`` uses for ``K`` tokens and ``n`` samples: 'newton' or 'cg'."""
  return 'newton' if K <= NEWTON_MAX_K and n * K <= NEWTON_MAX_NK else 'cg'


def _check_ids(name, x, ndim, K):
  x = np.asarray(x)
  if x.ndim != ndim:
    raise ValueError(f'{name} must be a {ndim}-D integer array, got shape {x.shape}')
  if not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f'{name} must hold integer token ids, got dtype {x.dtype}')
  if x.size and (x.min() < 0 or x.max() >= K):
    bad = x.min() if x.min() < 0 else x.max()
    raise ValueError(f'{name} holds token id {bad}, outside [0, K) = [0, {K})')
  return x.astype(np.int32, copy=False)


def fit_mle(prompts, answers, K, *, cross=False, ridge=1e-6, method='auto', tol=1e-4,
            max_iter=100) -> FitResult:
  """Maximum-likelihood scores ``A_hat`` from prompts and answers given as token ids.

  One call does everything (checks, the solver, its compilation, cached per shape). Minimises
  the objective of :func:`ccmc_jax.fit.fit_scores`, ``l(A) = mean NLL + (ridge/2)||A||_F^2``,
  by

  * 'cg': nonlinear conjugate gradient (Polak-Ribiere+) on all K row problems at once,
    preconditioned by the Hessian diagonal, with an exact per-row line search. A pass costs
    O(nL) (a gather and a scatter-add over the key positions), memory O(nL + K^2): no count
    vectors, no K x K Hessians.
  * 'newton': the dense batched damped Newton of :mod:`ccmc_jax.fit` on count vectors (memory
    O(nK), work O(nK + K^4) per iteration): faster for small K.
  * 'auto': 'newton' for K <= ``NEWTON_MAX_K`` (and n K <= ``NEWTON_MAX_NK``), else 'cg'
    (the crossover measured by ``python -m benchmarks.large_k``, see docs/performance.md).

  Stopping rule (both solvers): every row's ``n g^T M^{-1} g < tol`` (in nats; ``M`` the
  Hessian for Newton, its diagonal for 'cg'), about twice the row's gap to the optimal
  log-likelihood; tested against float64 optima. ``tol = 1e-4`` is far below the statistical
  error's ~K/2 nats per row.

  Rows without samples and tokens that never occur in a row's prompts carry no information:
  the ridge sets their scores to 0 (with ``ridge = 0`` they keep their start value). The
  estimate has zero row means (the gauge), so ``softmax(A_hat)`` estimates ``P``.

  Args:
    prompts: (n, L) integer token ids (numpy or JAX); the query is the last column.
    answers: (n,) integer next tokens; each must be a key token of its prompt.
    K: vocabulary size, 2 <= K <= 46340.
    cross: cross-attention (the query is not a key; needs L >= 2).
    ridge: ``(ridge/2)||A||_F^2`` added to the mean NLL (>= 0). Note ``n * ridge`` is the
      precision of the implied Gaussian prior on each score: keep it small against ``n/K^2``.
    method: 'auto', 'newton' or 'cg'.
    tol: stopping tolerance in nats per row (>= 0).
    max_iter: iterations at most (>= 1).
  Returns:
    FitResult(A_hat (K, K) float32 row-centred, iters used, dropped = 0).
  References: paper Sec. 3 (convex MLE, separable over query rows), Lemma 2.2.
  """
  if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or not 2 <= K <= MAX_K:
    raise ValueError(f'K must be an integer in [2, {MAX_K}], got {K!r}')
  K = int(K)
  if method not in METHODS:
    raise ValueError(f'method must be one of {", ".join(METHODS)}, got {method!r}')
  for name, value in (('ridge', ridge), ('tol', tol)):
    if not (isinstance(value, (int, float, np.floating)) and np.isfinite(value) and value >= 0):
      raise ValueError(f'{name} must be a finite number >= 0, got {value!r}')
  if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
    raise ValueError(f'max_iter must be an integer >= 1, got {max_iter!r}')
  prompts = _check_ids('prompts', prompts, 2, K)
  answers = _check_ids('answers', answers, 1, K)
  n, L = prompts.shape
  if n < 1 or answers.shape[0] != n:
    raise ValueError(f'answers must have shape (n,) = ({n},) matching prompts (n, L) = '
                     f'{prompts.shape}, with n >= 1; got {answers.shape}')
  if L < 1 + bool(cross):
    raise ValueError(f'prompts must have L >= {1 + bool(cross)} columns'
                     f'{" with cross=True" if cross else ""}, got L = {L}')
  keys = key_positions(prompts, cross)
  missing = ~np.any(keys == answers[:, None], axis=1)
  if missing.any():
    t = int(np.flatnonzero(missing)[0])
    raise ValueError(f'answers[{t}] = {answers[t]} is not a key token of prompts[{t}]: its '
                     'likelihood is 0 (pi^X is supported on the keys)')
  if method == 'auto':
    method = choose_method(K, n)
  if method == 'newton':
    capacity = fit.round_capacity(np.bincount(prompts[:, -1], minlength=K).max())
    return _newton_fit(prompts, answers, K, capacity, bool(cross), ridge, tol, int(max_iter))
  A_hat, iters, _ = _cg_fit(prompts, answers, K=K, cross=bool(cross), ridge=ridge, tol=tol,
                            max_iter=int(max_iter))
  return FitResult(A_hat, iters, jnp.int32(0))
