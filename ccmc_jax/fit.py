"""Maximum-likelihood estimation of the scores ``A`` (hence ``W = A^T`` and ``P``) from IID data.

The negative log-likelihood (paper Sec. 3; ``docs/theory.md`` Sec. 3)

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

Convention: every function here takes scores ``A = W^T`` (row = query token, ``P = softmax(A)``),
never ``W`` and never ``P``; :func:`ccmc_jax.model.scores` turns ``W`` into ``A``. The error
metrics refuse a row-stochastic matrix where scores are expected (see :func:`p_error` and
:func:`ccmc_jax.model.check_scores`).

One fit is one call: :func:`fit_dataset` (capacity and ``jit`` handled inside). The pieces below
(:func:`row_capacity`, :func:`group_by_query`, :func:`restrict`, :func:`fit_grouped`) are for
sweeps that group a data set once and fit many ``n`` under one ``jit(vmap(...))``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ccmc_jax import checks
from ccmc_jax import model
from ccmc_jax.sampling import Dataset

CHUNK = 256  # samples per chunk of a pass: a pass over n samples costs ~n, not ~capacity


class Grouped(NamedTuple):
  """Samples sorted by query row, everything the likelihood needs.

  Attributes:
    log_m: (K, C, K) log key counts of the samples of each row (``-inf`` for absent tokens).
    weight: (K, C) sample weights ``1/n`` (0 on padding and on samples beyond the first ``n``).
    answer_freq: (K, K) answer frequencies ``#{t < n: q_t = k, y_t = j} / n`` at ``[k, j]``.
    index: (K, C) original sample index of each slot (``N`` on padding).
    y: (K, C) answer of each slot.
  (Not ``w``/``b``: those are the position weights and bias of :mod:`ccmc_jax.positional`.)
  """
  log_m: jax.Array
  weight: jax.Array
  answer_freq: jax.Array
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
  K = g.answer_freq.shape[0]
  n_f = jnp.asarray(n, jnp.float32)
  weight = (g.index < n).astype(jnp.float32) / n_f
  rows = jnp.broadcast_to(jnp.arange(K)[:, None], weight.shape)
  answer_freq = jnp.zeros((K, K), jnp.float32).at[rows, g.y].add(weight)
  return g._replace(weight=weight, answer_freq=answer_freq)


def _chunked_sum(fn, log_m, weight, slots=None):
  """``sum_c fn(log_m[chunk c], weight[chunk c])`` over the chunks of the first ``slots`` slots.

  ``slots`` (traced) bounds the work: a row's samples among the first ``n`` are a prefix of its
  slots, so a pass costs ~n/K samples per row whatever the capacity. None: one chunk, all slots.
  """
  C = log_m.shape[0]
  if slots is None or C <= CHUNK or C % CHUNK:
    return fn(log_m, weight)
  zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, log_m[:CHUNK], weight[:CHUNK]))

  def body(c, acc):
    lm = jax.lax.dynamic_slice_in_dim(log_m, c * CHUNK, CHUNK)
    wt = jax.lax.dynamic_slice_in_dim(weight, c * CHUNK, CHUNK)
    return jax.tree.map(jnp.add, acc, fn(lm, wt))

  return jax.lax.fori_loop(0, (slots + CHUNK - 1) // CHUNK, body, zero)


def row_loss(a, log_m, weight, freq, ridge=0.0):
  """Row ``k``'s share of the NLL, ``sum_t weight_t lse(a + log m_t) - freq.a + (ridge/2)|a|^2``."""
  lse = jax.nn.logsumexp(a[None, :] + log_m, axis=-1)
  return weight @ lse - freq @ a + 0.5 * ridge * a @ a


def _row_stats(a, log_m, weight, freq, ridge, slots=None):
  """One pass over a row's samples: loss, gradient and Hessian at ``a``.

  Gradient ``sum_t weight_t pi_t - freq + ridge a``; Hessian
  ``sum_t weight_t (diag pi_t - pi_t pi_t^T) + ridge I``, with
  ``pi_t = softmax(a + log m_t) = pi^{X_t}`` (Lemma 2.2).
  """
  def chunk(lm, wt):
    logits = a[None, :] + lm
    top = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    e = jnp.exp(logits - top)  # one exp per (sample, token): the pass is memory bound
    total = e.sum(axis=-1, keepdims=True)
    pi = e / total
    lse = (top + jnp.log(total))[:, 0]
    return wt @ lse, wt @ pi, (pi * wt[:, None]).T @ pi

  lse, mean_pi, gram = _chunked_sum(chunk, log_m, weight, slots)
  loss = lse - freq @ a + 0.5 * ridge * a @ a
  grad = mean_pi - freq + ridge * a
  hess = jnp.diag(mean_pi) - gram + ridge * jnp.eye(a.shape[0])
  return loss, grad, hess


def row_hessian(a, log_m, weight, freq, slots=None):
  """Row ``k``'s Hessian ``(1/n) sum_{t: q_t = k} (diag pi_t - pi_t pi_t^T)`` (no ridge).

  At the truth this is the Monte-Carlo Fisher information ``F_k`` of the theory overlay.
  ``slots``: as in :func:`_chunked_sum`; with it the sums run over chunks of :data:`CHUNK`
  samples, whose summation order does not depend on the CPU thread count (one sum over
  thousands of samples is split over threads by XLA's matmul, in a pool-size dependent order).
  """
  return _row_stats(a, log_m, weight, freq, 0.0, slots)[2]


def _moment_init(log_m, weight, freq, slots=None):
  """Start near the optimum: ``a_j = log(answers_j / exposure_j)`` (smoothed, centred)."""
  exposure = _chunked_sum(lambda lm, wt: wt @ jnp.exp(lm), log_m, weight, slots)
  exposure = exposure / jnp.maximum(exposure.sum(), 1e-30)
  answers = freq / jnp.maximum(freq.sum(), 1e-30)
  scale = jnp.maximum(weight.sum() / jnp.maximum(weight.max(), 1e-30), 1.0)  # samples in this row
  a = jnp.log((answers * scale + 0.5) / (exposure * scale + 0.5))
  return a - a.mean()


class NewtonState(NamedTuple):
  """The carry of :func:`damped_newton`'s loop.

  Attributes:
    x: current iterate.
    stats: (loss, gradient, Hessian) at ``x``.
    step: step length ``t`` to try next (doubles after an accepted step, halves after a rejected
      one).
    iteration: iterations done (each one pass over the data).
    done: stopping test met.
  """
  x: jax.Array
  stats: tuple
  step: jax.Array
  iteration: jax.Array
  done: jax.Array


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
  References: paper Sec. 3 (the MLE is convex); ``docs/theory.md`` Sec. 3.
  """
  def step(state: NewtonState) -> NewtonState:
    f0, g, H = state.stats
    t = state.step
    d, decrement = direction(g, H)
    trial = stats(state.x + t * d)
    # Armijo test; near the optimum (total decrement below one nat, the quadratic phase) the
    # full Newton step is taken as is: there the float32 loss cannot resolve the decrease.
    ok = (trial[0] <= f0 - 1e-4 * t * decrement) | (n * decrement < 1.0)
    if require_descent:
      ok = ok & (decrement > 0)
    x = jnp.where(ok, state.x + t * d, state.x)
    kept = jax.tree.map(lambda u, v: jnp.where(ok, u, v), trial, state.stats)
    done = (n * decrement < tol) | (t < 1e-4)
    return NewtonState(x, kept, jnp.where(ok, jnp.minimum(2 * t, 1.0), 0.5 * t),
                       state.iteration + 1, done)

  def cond(state: NewtonState):
    return (~state.done) & (state.iteration < max_iter)

  init = NewtonState(x0, stats(x0), jnp.float32(1.0), jnp.int32(0), jnp.bool_(False))
  final = jax.lax.while_loop(cond, step, init)
  return final.x, final.iteration


def _newton_row(log_m, weight, freq, ridge, tol, max_iter, slots=None):
  """Damped Newton (:func:`damped_newton`) on one row; returns (a_hat, iterations)."""
  K = log_m.shape[-1]
  ones = jnp.ones((K, K), jnp.float32) / K
  n = 1.0 / jnp.maximum(weight.max(), 1e-30)

  def direction(g, H):
    # H annihilates the all-ones (gauge) direction; adding 11^T/K makes it invertible without
    # changing the solution on the complement, where g lives.
    d = -jnp.linalg.solve(H + ones, g)
    return d, -g @ d

  a, it = damped_newton(lambda a: _row_stats(a, log_m, weight, freq, ridge, slots), direction,
                        _moment_init(log_m, weight, freq, slots), n, tol, max_iter,
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
  Raises:
    ValueError: ``K`` or ``capacity`` not an int >= 1, ``data`` shapes inconsistent with ``K``
      (always, under ``jit`` too); called eagerly, ids outside ``[0, K)`` or negative counts
      (under ``jit`` such samples are not checked: use :func:`fit_dataset`, which checks them).
  References: paper Sec. 3 (convex MLE); ``docs/theory.md`` Sec. 3.
  """
  K, capacity = checks.size('K', K), checks.size('capacity', capacity)
  checks.dataset(data, K)
  g, dropped = group_by_query(data, K, capacity, n)
  return fit_grouped(g, ridge, tol, max_iter)._replace(dropped=dropped)


@functools.partial(jax.jit, static_argnames=('K', 'capacity'))
def _fit_scores_jit(data, K, capacity, n, ridge, tol, max_iter):
  """:func:`fit_scores` compiled once per ``(K, capacity, data shape)``; ``n``, ``ridge``,
  ``tol`` and ``max_iter`` are traced (no recompilation when they change)."""
  fit_one = lambda d: fit_scores(d, K, capacity, n, ridge, tol, max_iter)
  for _ in range(data.query.ndim - 1):
    fit_one = jax.vmap(fit_one)
  return fit_one(data)


def fit_dataset(data: Dataset, K, n=None, ridge=1e-6, tol=1e-4, max_iter=50) -> FitResult:
  """One call from a data set to the maximum-likelihood scores: capacity and ``jit`` inside.

  Computes the per-row capacity on the host (:func:`row_capacity`, rounded up so that data sets
  of similar size share one compilation), then runs :func:`fit_scores` under a cached ``jit``:
  the first call for a ``(K, data shape)`` compiles (seconds), later calls with any ``n``,
  ``ridge``, ``tol`` or ``max_iter`` reuse it (milliseconds). Not jittable itself (the capacity
  is a host-side number); inside your own ``jit``/``vmap`` call :func:`fit_scores` with a static
  capacity instead.

  Args:
    data: Dataset of N samples (``sampling.sample_dataset``), or a batch of data sets with
      leading axes (e.g. (trials, N)): each is fitted separately (``vmap``).
    K: vocabulary size; must match ``data.counts.shape[-1]``.
    n: use the first ``n`` samples (1 <= n <= N); None means all N.
    ridge, tol, max_iter: as in :func:`fit_scores`.
  Returns:
    FitResult (batched like ``data``): ``A_hat`` row-centred scores, ``softmax(A_hat, -1)``
    estimates ``P``; ``dropped`` is 0.
  Raises:
    ValueError: ``K`` does not match the data, token ids outside ``[0, K)``, negative counts,
      a bad ``n``, ``ridge``, ``tol`` or ``max_iter``.
  References: paper Sec. 3 (convex MLE); ``docs/theory.md`` Sec. 3.
  """
  K = checks.size('K', K, 2)
  counts_shape = checks.shape_of(getattr(data, 'counts', None))
  if counts_shape and counts_shape[-1] != K:
    raise ValueError(f'K={K} does not match the data set: its counts have '
                     f'{counts_shape[-1]} columns')
  N = checks.dataset(data, K)
  for name, value in (('ridge', ridge), ('tol', tol)):
    checks.number(name, value, 0)
  checks.size('max_iter', max_iter)
  query = np.asarray(data.query)
  if n is not None and (isinstance(n, bool) or not float(n).is_integer()):
    raise ValueError(f'n={n!r}: allowed range is 1 <= n <= N = {N} (an integer)')
  n = N if n is None else int(n)
  if not 1 <= n <= N:
    raise ValueError(f'n={n}: allowed range is 1 <= n <= N = {N} (the data set size)')
  # Capacity from all N samples, not the first n: one compilation serves every n (a pass costs
  # ~n anyway, see fit_grouped).
  capacity = round_capacity(row_capacity(query, K))
  return _fit_scores_jit(data, K, capacity, jnp.int32(n), jnp.float32(ridge),
                         jnp.float32(tol), jnp.int32(max_iter))


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
  A_hat, iters = solve(g.log_m, g.weight, g.answer_freq, ridge, tol, max_iter, slots)
  return FitResult(A_hat, iters.max(), jnp.int32(0))


def used_slots(g: Grouped, n=None):
  """Largest number of slots any row uses for the first ``n`` samples (all batch dims reduced)."""
  used = g.weight > 0 if n is None else g.index < n
  return jnp.max(jnp.sum(used, axis=-1))


def nll(A, grouped: Grouped, ridge=0.0):
  """Full objective ``l(A)`` on grouped data (sum of the K row losses)."""
  losses = jax.vmap(row_loss, in_axes=(0, 0, 0, 0, None))(
      A, grouped.log_m, grouped.weight, grouped.answer_freq, ridge)
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


def _check_same_square_shape(A_hat, truth):
  """Shapes are static, so this raises under ``jit`` too: both (..., K, K), the same K."""
  a, b = jnp.shape(A_hat), jnp.shape(truth)
  if len(a) < 2 or a[-1] != a[-2] or a[-2:] != b[-2:]:
    raise ValueError(f'the estimate and the truth must both be (..., K, K) with the same K; '
                     f'got shapes {a} and {b}')


def p_error(A_hat, A_true=None, *, P_true=None):
  """Squared Frobenius error on the transition matrix, ``||P_hat - P*||_F^2`` (finite for finite
  ``A_hat``; a NaN estimate, e.g. of a diverged fit, gives NaN: a failure, never a number).

  ``P_hat = softmax(A_hat, -1)``; the truth is given either as scores ``A_true`` (``P* =
  softmax(A_true, -1)``) or as a transition matrix by keyword, ``P_true=P``. Both arguments are
  scores (``A = W^T``, row = query token; not ``W``, not ``P``): a row-stochastic matrix passed
  as ``A_hat`` or ``A_true`` (the swap ``p_error(A_hat, P)``, which would silently measure the
  distance to ``softmax(P)``) raises ``ValueError`` when called eagerly and gives NaN under
  ``jit``/``vmap``, never a plausible number.

  Args:
    A_hat: (..., K, K) estimated scores.
    A_true: (..., K, K) true scores (``-inf`` allowed: a zero diagonal).
    P_true: keyword-only alternative to ``A_true``: (..., K, K) row-stochastic truth.
  Raises:
    ValueError: shapes that are not (..., K, K) with the same K, or both / neither truth given
      (always); called eagerly, a row-stochastic ``A_hat``/``A_true``, NaN or ``+inf`` in
      ``A_true``, NaN or inf in ``P_true``.
  References: paper Sec. 3 (sample complexity, error ~ K^2/n).
  """
  if (A_true is None) == (P_true is None):
    raise ValueError('p_error needs exactly one of A_true (scores) or P_true= (probabilities)')
  _check_same_square_shape(A_hat, P_true if A_true is None else A_true)
  model.check_scores(A_hat, 'A_hat')
  bad = model.looks_stochastic(A_hat)
  if A_true is None:
    checks.no_nan('P_true', P_true, neg_inf=False)
  else:
    model.check_scores(A_true, 'A_true')
    checks.no_nan('A_true', A_true)
    bad = bad | model.looks_stochastic(A_true)
    P_true = jax.nn.softmax(A_true, -1)
  err = jnp.sum((jax.nn.softmax(A_hat, -1) - P_true) ** 2, axis=(-2, -1))
  return jnp.where(bad, jnp.nan, err)


def centered_w_error(A_hat, A_true):
  """``||c(A_hat) - c(A*)||_F^2`` with ``c`` the row centring (the gauge); inf if A* has -inf.

  Both are scores ``A = W^T``; a row-stochastic argument is refused as in :func:`p_error`.
  """
  _check_same_square_shape(A_hat, A_true)
  model.check_scores(A_hat, 'A_hat')
  model.check_scores(A_true, 'A_true')
  c = lambda A: A - A.mean(axis=-1, keepdims=True)
  err = jnp.sum((c(A_hat) - c(A_true)) ** 2, axis=(-2, -1))
  bad = model.looks_stochastic(A_hat) | model.looks_stochastic(A_true)
  return jnp.where(bad, jnp.nan, err)
