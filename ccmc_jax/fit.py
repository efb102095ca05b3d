"""Maximum-likelihood estimation of the scores ``A`` (hence ``W = A^T`` and ``P``) from IID data.

The negative log-likelihood (paper Sec. 3, ``shared/paper.md`` Sec. 2)

    l(A) = -(1/n) sum_t [ A[q_t, y_t] - log sum_j m_{t,j} exp(A[q_t, j]) ] + (ridge/2) ||A||^2

is convex and separates into K independent problems, one per query row ``k``: a multinomial
logistic regression over the samples with ``q_t = k`` whose classes are masked by the counts.
We sort the samples by query into a padded ``(K, C, K)`` layout (``C`` = capacity per row) and
run a damped Newton method on all rows at once: gradient ``(1/n) sum (pi_t - e_{y_t})``,
Hessian ``(1/n) sum (diag pi_t - pi_t pi_t^T)``. The gauge direction (adding a constant to a
row) is fixed by solving in the subspace orthogonal to the all-ones vector, so the estimate has
zero row means. A tiny ridge keeps the estimate finite when the MLE does not exist (a token that
is in some prompts of row k but never the answer drives its score to ``-inf``).

Everything here is pure and shape-static given ``(K, capacity)``; ``n`` is a traced scalar, so one
compilation serves every ``n`` of a sweep (the data are padded to the largest ``n``).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ccmc_jax.sampling import Dataset

CHUNK = 256  # samples per chunk of a pass: a pass over n samples costs ~n, not ~capacity


class Grouped(NamedTuple):
  """Samples sorted by query row, everything the likelihood needs.

  Attributes:
    log_m: (K, C, K) log key counts of the samples of each row (``-inf`` for absent tokens).
    w: (K, C) sample weights ``1/n`` (0 on padding and on samples beyond the first ``n``).
    b: (K, K) answer frequencies ``b[k, j] = #{t < n: q_t = k, y_t = j} / n``.
    index: (K, C) original sample index of each slot (``N`` on padding).
    y: (K, C) answer of each slot.
  """
  log_m: jax.Array
  w: jax.Array
  b: jax.Array
  index: jax.Array
  y: jax.Array


class FitResult(NamedTuple):
  """``A_hat`` (K, K) row-centred scores, Newton ``iters`` used, samples ``dropped`` (must be 0)."""
  A_hat: jax.Array
  iters: jax.Array
  dropped: jax.Array


def row_capacity(query, K, n=None) -> int:
  """Host-side: the largest number of samples sharing one query among the first ``n``.

  Round the result up (:func:`round_capacity`) and pass it as ``capacity`` so one compiled fit
  serves every trial and every ``n`` of a sweep.
  """
  q = np.asarray(query)
  q = q[..., :n] if n is not None else q
  q = q.reshape(-1, q.shape[-1])
  return int(max(np.bincount(row, minlength=K).max() for row in q))


def round_capacity(c, multiple=256) -> int:
  """Round a capacity up to a multiple (fewer distinct shapes, fewer compilations)."""
  return int(-(-max(int(c), 1) // multiple) * multiple)


COUNTING_SORT_MAX = 2**22  # N * K up to which stable_order counts instead of sorting


def stable_order(query, K, starts):
  """``argsort(query, stable=True)`` for tokens in ``[0, K)`` (``starts``: first position of
  each token in sorted order). For ``N K <= COUNTING_SORT_MAX`` a counting sort: each sample's
  rank among earlier samples with its query (a cumulative sum of one-hot rows) gives its
  position, O(N K) work and memory and ~4x faster than XLA's sort on CPU; else the sort."""
  N = query.shape[0]
  if N * K > COUNTING_SORT_MAX:
    return jnp.argsort(query, stable=True)
  one_hot = (query[:, None] == jnp.arange(K)).astype(jnp.int32)
  rank = jnp.take_along_axis(jnp.cumsum(one_hot, axis=0), query[:, None], axis=1)[:, 0] - 1
  return jnp.zeros(N, jnp.int32).at[starts[query] + rank].set(
      jnp.arange(N, dtype=jnp.int32), unique_indices=True)


def group_by_query(data: Dataset, K, capacity, n=None):
  """Sort the samples of ``data`` by query into a padded per-row layout, weighted for ``n``.

  The sort is stable and does not depend on ``n``: the first ``n`` samples of a row are a
  prefix of its slots. So a sweep groups once and re-weights with :func:`restrict` per ``n``.

  Args:
    data: Dataset with N >= n rows.
    K: vocabulary size (static).
    capacity: samples per row C (static); samples beyond it are dropped and counted.
    n: number of samples to use (traced scalar allowed); None means all N.
  Returns:
    (Grouped, dropped) where ``dropped`` is the number of samples that did not fit.
  """
  N = data.query.shape[0]
  sizes = jnp.bincount(data.query, length=K)
  starts = jnp.cumsum(sizes) - sizes
  order = stable_order(data.query, K, starts)
  slot = jnp.arange(capacity)
  real = slot[None, :] < sizes[:, None]
  src = order[jnp.clip(starts[:, None] + slot[None, :], 0, N - 1)]
  index = jnp.where(real, src, N)
  counts = jnp.where(real[..., None], data.counts[src], 0)
  log_m = jnp.where(counts > 0, jnp.log(jnp.where(counts > 0, counts, 1.0)), -jnp.inf)
  # Padding slots keep a finite row (token 0 present) so that no pass meets an all -inf row.
  log_m = jnp.where(real[..., None], log_m, jnp.where(jnp.arange(K) == 0, 0.0, -jnp.inf))
  g = Grouped(log_m, jnp.zeros((K, capacity)), jnp.zeros((K, K)), index, data.y[src])
  dropped = jnp.maximum(sizes - capacity, 0).sum()
  return restrict(g, N if n is None else n), dropped


def restrict(g: Grouped, n):
  """Re-weight grouped samples to use only the first ``n`` (traced scalar allowed)."""
  K = g.b.shape[0]
  n_f = jnp.asarray(n, jnp.float32)
  w = (g.index < n).astype(jnp.float32) / n_f
  rows = jnp.broadcast_to(jnp.arange(K)[:, None], w.shape)
  b = jnp.zeros((K, K), jnp.float32).at[rows, g.y].add(w)
  return g._replace(w=w, b=b)


def _chunked_sum(fn, log_m, w, slots=None):
  """``sum_c fn(log_m[chunk c], w[chunk c])`` over the chunks holding the first ``slots`` slots.

  ``slots`` (traced) bounds the work: a row's samples among the first ``n`` are a prefix of its
  slots, so a pass costs ~n/K samples per row whatever the capacity. None: one chunk, all slots.
  """
  C = log_m.shape[0]
  if slots is None or C <= CHUNK or C % CHUNK:
    return fn(log_m, w)
  zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, log_m[:CHUNK], w[:CHUNK]))

  def body(c, acc):
    lm = jax.lax.dynamic_slice_in_dim(log_m, c * CHUNK, CHUNK)
    ww = jax.lax.dynamic_slice_in_dim(w, c * CHUNK, CHUNK)
    return jax.tree.map(jnp.add, acc, fn(lm, ww))

  return jax.lax.fori_loop(0, (slots + CHUNK - 1) // CHUNK, body, zero)


def row_loss(a, log_m, w, b, ridge=0.0):
  """Row ``k``'s share of the NLL, ``sum_t w_t lse(a + log m_t) - b.a``, + ``(ridge/2)||a||^2``."""
  lse = jax.nn.logsumexp(a[None, :] + log_m, axis=-1)
  return w @ lse - b @ a + 0.5 * ridge * a @ a


def _row_stats(a, log_m, w, b, ridge, slots=None):
  """One pass over a row's samples: loss, gradient and Hessian at ``a``.

  Gradient ``sum_t w_t pi_t - b + ridge a``; Hessian ``sum_t w_t (diag pi_t - pi_t pi_t^T)``
  (+ ridge I), with ``pi_t = softmax(a + log m_t)`` = ``pi^{X_t}`` (Lemma 2.2).
  """
  def chunk(lm, ww):
    logits = a[None, :] + lm
    top = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    e = jnp.exp(logits - top)  # one exp per (sample, token): the pass is memory bound
    total = e.sum(axis=-1, keepdims=True)
    pi = e / total
    lse = (top + jnp.log(total))[:, 0]
    return ww @ lse, ww @ pi, (pi * ww[:, None]).T @ pi

  lse, mean_pi, gram = _chunked_sum(chunk, log_m, w, slots)
  loss = lse - b @ a + 0.5 * ridge * a @ a
  grad = mean_pi - b + ridge * a
  hess = jnp.diag(mean_pi) - gram + ridge * jnp.eye(a.shape[0])
  return loss, grad, hess


def row_hessian(a, log_m, w, b):
  """Row ``k``'s Hessian ``(1/n) sum_{t: q_t = k} (diag pi_t - pi_t pi_t^T)`` (no ridge).

  At the truth this is the Monte-Carlo Fisher information ``F_k`` of the theory overlay.
  """
  return _row_stats(a, log_m, w, b, 0.0)[2]


def _moment_init(log_m, w, b, slots=None):
  """Start near the optimum: ``a_j = log(answers_j / exposure_j)`` (smoothed, centred)."""
  exposure = _chunked_sum(lambda lm, ww: ww @ jnp.exp(lm), log_m, w, slots)
  exposure = exposure / jnp.maximum(exposure.sum(), 1e-30)
  answers = b / jnp.maximum(b.sum(), 1e-30)
  scale = jnp.maximum(w.sum() / jnp.maximum(w.max(), 1e-30), 1.0)  # samples in this row
  a = jnp.log((answers * scale + 0.5) / (exposure * scale + 0.5))
  return a - a.mean()


def damped_newton(stats, direction, x0, n, tol, max_iter, require_descent=False):
  """Damped Newton with backtracking spread over iterations; returns (x_hat, iterations).

  Each iteration makes exactly one pass over the data: it evaluates ``stats(x + t d)`` =
  (loss, gradient, Hessian) at the trial point; the point is accepted when it passes the Armijo
  test or is in the quadratic phase (then ``t`` doubles, up to 1), otherwise rejected and ``t``
  halves. So problems batched under vmap never wait on each other's line searches.

  Args:
    stats: x -> (loss, gradient, Hessian), losses as means over the ``n`` samples.
    direction: (gradient, Hessian) -> (Newton direction d, decrement -g^T d).
    x0: starting point.
    n: number of samples (the loss is a mean): the decrement in nats is ``n g^T H^-1 g``.
    tol: stop when ``n`` x decrement (about twice the log-likelihood gap, in nats) < tol.
    max_iter: iterations at most.
    require_descent: also reject steps whose decrement is not positive.
  """
  def step(state):
    x, (f0, g, H), t, it, _ = state
    d, decrement = direction(g, H)
    trial = stats(x + t * d)
    # Armijo test; near the optimum (total decrement below one nat, the quadratic phase) the
    # full Newton step is taken as is: there the float32 loss cannot resolve the decrease.
    ok = (trial[0] <= f0 - 1e-4 * t * decrement) | (n * decrement < 1.0)
    if require_descent:
      ok = ok & (decrement > 0)
    x = jnp.where(ok, x + t * d, x)
    kept = jax.tree.map(lambda u, v: jnp.where(ok, u, v), trial, (f0, g, H))
    done = (n * decrement < tol) | (t < 1e-4)
    return x, kept, jnp.where(ok, jnp.minimum(2 * t, 1.0), 0.5 * t), it + 1, done

  def cond(state):
    return (~state[4]) & (state[3] < max_iter)

  init = (x0, stats(x0), jnp.float32(1.0), jnp.int32(0), False)
  x, _, _, it, _ = jax.lax.while_loop(cond, step, init)
  return x, it


def _newton_row(log_m, w, b, ridge, tol, max_iter, slots=None):
  """Damped Newton (:func:`damped_newton`) on one row; returns (a_hat, iterations)."""
  K = log_m.shape[-1]
  ones = jnp.ones((K, K), jnp.float32) / K
  n = 1.0 / jnp.maximum(w.max(), 1e-30)

  def direction(g, H):
    # H annihilates the all-ones (gauge) direction; adding 11^T/K makes it invertible without
    # changing the solution on the complement, where g lives.
    d = -jnp.linalg.solve(H + ones, g)
    return d, -g @ d

  a, it = damped_newton(lambda a: _row_stats(a, log_m, w, b, ridge, slots), direction,
                        _moment_init(log_m, w, b, slots), n, tol, max_iter,
                        require_descent=True)
  return a - a.mean(), it


def fit_scores(data: Dataset, K, capacity, n=None, ridge=1e-6, tol=1e-4, max_iter=50):
  """Maximum-likelihood scores ``A_hat`` from a data set, by batched damped Newton.

  Args:
    data: Dataset (N rows; the first ``n`` are used).
    K: vocabulary size (static).
    capacity: per-row capacity (static); see :func:`row_capacity`.
    n: samples to use (traced scalar allowed); None means all.
    ridge: ``(ridge/2)||A||^2`` penalty keeping the estimate finite when the MLE does not exist.
    tol: stop a row when ``n g^T H^{-1} g`` (about twice its total log-likelihood gap to the
      optimum, in nats) falls below ``tol``; far below the statistical error's ``~K/2`` nats.
    max_iter: Newton iterations at most.
  Returns:
    FitResult; ``A_hat`` has zero row means (the gauge), ``softmax(A_hat)`` estimates ``P``.
  References: paper Sec. 3 (convex MLE); shared/paper.md Sec. 2.
  """
  g, dropped = group_by_query(data, K, capacity, n)
  return fit_grouped(g, ridge, tol, max_iter)._replace(dropped=dropped)


def fit_grouped(g: Grouped, ridge=1e-6, tol=1e-4, max_iter=50, slots=None):
  """:func:`fit_scores` on already grouped samples (group once, :func:`restrict` per ``n``).

  Each pass touches only the chunks holding a row's first-``n`` samples, so a fit on ``n``
  samples costs ~n whatever the padding (one compiled function serves every ``n``).

  Args:
    g: Grouped samples, weighted for the ``n`` to fit.
    slots: bound on the used slots per row (default: computed from ``g``). Under ``vmap`` pass
      an unbatched bound (see :func:`used_slots`) so the chunk loop has one trip count.
  """
  slots = used_slots(g) if slots is None else slots
  solve = jax.vmap(_newton_row, in_axes=(0, 0, 0, None, None, None, None))
  A_hat, iters = solve(g.log_m, g.w, g.b, ridge, tol, max_iter, slots)
  return FitResult(A_hat, iters.max(), jnp.int32(0))


def used_slots(g: Grouped, n=None):
  """Largest number of slots any row uses for the first ``n`` samples (all batch dims reduced)."""
  used = g.w > 0 if n is None else g.index < n
  return jnp.max(jnp.sum(used, axis=-1))


def nll(A, grouped: Grouped, ridge=0.0):
  """Full objective ``l(A)`` on grouped data (sum of the K row losses)."""
  losses = jax.vmap(row_loss, in_axes=(0, 0, 0, 0, None))(
      A, grouped.log_m, grouped.w, grouped.b, ridge)
  return losses.sum()


def fit_scores_optax(data: Dataset, K, capacity, n=None, ridge=1e-6, solver='lbfgs',
                     steps=500, learning_rate=0.1):
  """The same MLE by a first-order/quasi-Newton optax solver (for comparison with Newton).

  Args:
    solver: 'lbfgs' (optax.lbfgs with its zoom line search) or 'adam'.
    steps: iterations (fixed; the benchmark measures the objective gap per step budget).
  Returns:
    FitResult with row-centred ``A_hat``.
  """
  grouped, dropped = group_by_query(data, K, capacity, n)
  fun = lambda A: nll(A, grouped, ridge)
  opt = optax.lbfgs() if solver == 'lbfgs' else optax.adam(learning_rate)
  A0 = jnp.zeros((K, K), jnp.float32)
  value_and_grad = optax.value_and_grad_from_state(fun)

  def body(carry, _):
    A, state = carry
    if solver == 'lbfgs':
      value, grad = value_and_grad(A, state=state)
      updates, state = opt.update(grad, state, A, value=value, grad=grad, value_fn=fun)
    else:
      grad = jax.grad(fun)(A)
      updates, state = opt.update(grad, state, A)
    return (optax.apply_updates(A, updates), state), None

  (A, _), _ = jax.lax.scan(body, (A0, opt.init(A0)), None, length=steps)
  return FitResult(A - A.mean(axis=1, keepdims=True), jnp.int32(steps), dropped)


def p_error(A_hat, A_true):
  """Squared Frobenius error on the transition matrix, ``||P_hat - P*||_F^2`` (always finite).

  References: paper Sec. 3 (sample complexity, error ~ K^2/n).
  """
  return jnp.sum((jax.nn.softmax(A_hat, -1) - jax.nn.softmax(A_true, -1)) ** 2)


def centered_w_error(A_hat, A_true):
  """``||c(A_hat) - c(A*)||_F^2`` with ``c`` the row centring (the gauge); inf if A* has -inf."""
  c = lambda A: A - A.mean(axis=-1, keepdims=True)
  return jnp.sum((c(A_hat) - c(A_true)) ** 2)
