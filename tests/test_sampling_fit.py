"""Samplers (frequencies within Monte-Carlo error, prefix stability) and the MLE (optimality
against SciPy in float64, masking by n, 1/n decay matching the asymptotic theory)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import ccmc_jax
from ccmc_jax import fit, sampling, theory

# Jitted once per shape (eager calls would re-trace the Newton while_loop on every call).
fit_scores = jax.jit(fit.fit_scores, static_argnums=(1, 2),
                     static_argnames=('ridge', 'tol', 'max_iter'))
fit_scores_optax = jax.jit(fit.fit_scores_optax, static_argnums=(1, 2),
                           static_argnames=('solver', 'steps'))


@functools.lru_cache(maxsize=None)
def _sampler(K, L, n, scale, prompts, cross):
  fn = sampling.PROMPTS[prompts](K, L)

  def draw(key):
    A = sampling.sample_scores(jax.random.fold_in(key, 0), K, scale)
    return A, sampling.sample_dataset(jax.random.fold_in(key, 1), A, n, L, fn, cross)

  return jax.jit(draw)


def make_data(K=4, L=5, n=4000, seed=0, scale=1.0, prompts='uniform', cross=False):
  return _sampler(K, L, n, scale, prompts, cross)(jax.random.PRNGKey(seed))


def test_next_tokens_follow_pi():
  """y | X ~ pi^X: for one repeated prompt, counts within 4 standard errors (chi-square)."""
  K = 5
  A = sampling.sample_scores(jax.random.PRNGKey(1), K)
  x = jnp.array([0, 3, 3, 1, 2])
  X = jnp.tile(x, (40000, 1))
  y = np.asarray(sampling.sample_next_tokens(jax.random.PRNGKey(2), A, X))
  pi = np.asarray(ccmc_jax.ccmc_next_token_probs(jax.nn.softmax(A, -1), x))
  freq = np.bincount(y, minlength=K) / len(y)
  se = np.sqrt(pi * (1 - pi) / len(y))
  assert np.all(np.abs(freq - pi) <= 4 * se + 1e-12)
  assert freq[4] == 0  # absent token never drawn


def test_uniform_prompts_and_prefix_stability():
  K, L = 7, 4
  fn = sampling.uniform_prompt(K, L)
  X = np.asarray(sampling.sample_prompts(jax.random.PRNGKey(3), 5000, L, fn))
  assert X.shape == (5000, L) and X.min() == 0 and X.max() == K - 1
  freq = np.bincount(X.ravel(), minlength=K) / X.size
  assert np.all(np.abs(freq - 1 / K) < 4 * np.sqrt((1 / K) * (1 - 1 / K) / X.size))
  X2 = np.asarray(sampling.sample_prompts(jax.random.PRNGKey(3), 2100, L, fn))
  np.testing.assert_array_equal(X2, X[:2100])
  _, d1 = make_data(n=3000)
  _, d2 = make_data(n=1500)
  np.testing.assert_array_equal(d1.y[:1500], d2.y)


def test_two_group_prompts_never_mix_groups():
  K, L = 6, 5
  X = np.asarray(sampling.sample_prompts(jax.random.PRNGKey(4), 3000, L,
                                         sampling.two_group_prompt(K, L)))
  ctx = X[:, :-1]
  low = ctx < K // 2
  assert np.all(low.all(1) | (~low).all(1))
  assert 0.45 < low.all(1).mean() < 0.55
  assert set(np.unique(X[:, -1])) == set(range(K))


def numpy_nll_grad(A_flat, q, counts, y, ridge, K):
  """Independent float64 NLL and gradient, one sample at a time in vectorised numpy."""
  A = A_flat.reshape(K, K)
  n = len(y)
  with np.errstate(divide='ignore'):
    logits = A[q] + np.log(counts)
  top = logits.max(1, keepdims=True)
  e = np.exp(logits - top)
  lse = top[:, 0] + np.log(e.sum(1))
  pi = e / e.sum(1, keepdims=True)
  f = np.mean(lse - A[q, y]) + 0.5 * ridge * np.sum(A * A)
  G = np.zeros((K, K))
  r = pi.copy()
  r[np.arange(n), y] -= 1
  np.add.at(G, q, r / n)
  return f, (G + ridge * A).ravel()


def scipy_fit(data, K, ridge):
  q, c, y = (np.asarray(v, np.float64) for v in data)
  q, y = q.astype(int), y.astype(int)
  res = optimize.minimize(numpy_nll_grad, np.zeros(K * K), jac=True, method='L-BFGS-B',
                          args=(q, c, y, ridge, K), options={'maxiter': 5000, 'gtol': 1e-10,
                                                             'ftol': 1e-15})
  return res.x.reshape(K, K), res.fun


@pytest.mark.parametrize('cross', [False, True])
def test_newton_reaches_scipy_optimum(cross):
  K, ridge = 4, 1e-3
  A, data = make_data(K=K, n=3000, cross=cross)
  A_ref, f_ref = scipy_fit(data, K, ridge)
  res = fit_scores(data, K, fit.row_capacity(data.query, K), ridge=ridge, tol=1e-8)
  assert int(res.dropped) == 0
  f_ours, g = numpy_nll_grad(np.asarray(res.A_hat, np.float64).ravel(), np.asarray(data.query),
                             np.asarray(data.counts, np.float64), np.asarray(data.y), ridge, K)
  assert f_ours <= f_ref + 1e-6 * abs(f_ref)
  assert np.max(np.abs(g)) < 1e-4
  np.testing.assert_allclose(jax.nn.softmax(res.A_hat, -1), jax.nn.softmax(A_ref, -1), atol=1e-4)
  # The ridge makes the optimum unique, with zero row means (the gauge).
  np.testing.assert_allclose(np.asarray(res.A_hat).mean(1), 0, atol=1e-5)


def test_nll_matches_numpy():
  K = 4
  A, data = make_data(K=K, n=500)
  Ahat = np.random.default_rng(0).normal(size=(K, K)).astype(np.float32)
  g, _ = fit.group_by_query(data, K, fit.row_capacity(data.query, K))
  f_ref, grad_ref = numpy_nll_grad(Ahat.astype(np.float64).ravel(), np.asarray(data.query),
                                   np.asarray(data.counts, np.float64), np.asarray(data.y), 0.1, K)
  np.testing.assert_allclose(float(fit.nll(Ahat, g, 0.1)), f_ref, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.grad(fit.nll)(Ahat, g, 0.1)).ravel(), grad_ref,
                             atol=1e-5)


@pytest.mark.parametrize('N, K', [(1000, 7), (5000, 1000)])  # counting sort; XLA sort
def test_stable_order_is_a_stable_argsort(N, K):
  q = np.random.default_rng(N).integers(0, K, N).astype(np.int32)
  sizes = np.bincount(q, minlength=K)
  starts = jnp.asarray(np.cumsum(sizes) - sizes)
  order = jax.jit(fit.stable_order, static_argnums=1)(jnp.asarray(q), K, starts)
  np.testing.assert_array_equal(order, np.argsort(q, kind='stable'))


def test_traced_n_equals_truncated_data():
  """fit on the first n of N samples (masked, padded) == fit on the n samples alone."""
  K = 5
  _, data = make_data(K=K, n=3000)
  cap = fit.round_capacity(fit.row_capacity(data.query, K))
  masked = jax.jit(lambda d, n: fit.fit_scores(d, K, cap, n, tol=1e-9).A_hat)(data, 1234)
  alone = fit_scores(jax.tree.map(lambda v: v[:1234], data), K, cap, tol=1e-9).A_hat
  np.testing.assert_allclose(masked, alone, atol=2e-5)


def test_vmap_equals_loop_and_capacity_guard():
  K = 3
  datas = [make_data(K=K, n=800, seed=s)[1] for s in range(3)]
  batch = jax.tree.map(lambda *v: jnp.stack(v), *datas)
  cap = fit.round_capacity(fit.row_capacity(batch.query, K))
  vm = jax.jit(jax.vmap(lambda d: fit.fit_scores(d, K, cap, tol=1e-9).A_hat))(batch)
  for i, d in enumerate(datas):
    np.testing.assert_allclose(vm[i], fit_scores(d, K, cap, tol=1e-9).A_hat, atol=2e-5)
  assert int(fit_scores(datas[0], K, 100).dropped) > 0


def test_mle_nonexistence_stays_finite():
  """A token present in prompts but never the answer: the MLE does not exist, P_hat stays
  finite and puts (almost) no mass there."""
  K = 3
  counts = jnp.array([[1., 1., 1.]] * 50)
  y = jnp.array([0, 1] * 25)
  data = sampling.Dataset(jnp.zeros(50, jnp.int32), counts, y.astype(jnp.int32))
  res = fit_scores(data, K, 64)
  P = jax.nn.softmax(res.A_hat, -1)
  assert bool(jnp.all(jnp.isfinite(res.A_hat)))
  assert float(P[0, 2]) < 1e-3
  np.testing.assert_allclose(P[0, :2], [0.5, 0.5], atol=1e-3)
  assert float(fit.p_error(res.A_hat, jnp.zeros((K, K)))) < 1.0


def test_error_decays_like_one_over_n_and_matches_theory():
  """K = 4, L = 6: mean error over 24 trials at n = 2000 and 16000 within 25% of the
  asymptotic prediction, and the ratio close to 8 (1/n decay)."""
  K, L, trials = 4, 6, 24
  fn = sampling.uniform_prompt(K, L)

  def trial(key):
    A = sampling.sample_scores(jax.random.fold_in(key, 0), K)
    return A, sampling.sample_dataset(jax.random.fold_in(key, 1), A, 16000, L, fn)

  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(jnp.arange(trials))
  A, data = jax.lax.map(trial, keys)
  cap = fit.round_capacity(fit.row_capacity(data.query, K))
  err = jax.jit(jax.vmap(lambda d, a, n: fit.p_error(fit.fit_scores(d, K, cap, n).A_hat, a),
                         in_axes=(0, 0, None)))
  e_small, e_big = float(err(data, A, 2000).mean()), float(err(data, A, 16000).mean())
  mc_data = jax.jit(jax.vmap(lambda a: sampling.sample_dataset(jax.random.PRNGKey(8), a, 50000,
                                                              L, fn)))(A)
  mc_cap = fit.row_capacity(mc_data.query, K)
  pred = float(jax.jit(jax.vmap(lambda a, mc: theory.predicted_error(a, mc, K, mc_cap, 16000)))(
      A, mc_data).mean())
  assert 0.75 < e_big / pred < 1.33, (e_big, pred)
  assert 5.5 < e_small / e_big < 11.5, (e_small, e_big)


def test_optax_solvers_reach_the_newton_optimum():
  K = 4
  _, data = make_data(K=K, n=2000)
  cap = fit.row_capacity(data.query, K)
  newton = fit_scores(data, K, cap, tol=1e-8).A_hat
  lbfgs = fit_scores_optax(data, K, cap, solver='lbfgs', steps=200).A_hat
  np.testing.assert_allclose(jax.nn.softmax(lbfgs, -1), jax.nn.softmax(newton, -1), atol=1e-3)
