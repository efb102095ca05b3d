"""Samplers (frequencies within Monte-Carlo error, prefix stability) and the MLE (optimality
against SciPy in float64, masking by n, 1/n decay matching the asymptotic theory)."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import ccmc_jax
from ccmc_jax import fit, sampling, theory
from ccmc_jax.model import looks_stochastic as model_looks

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


def enumerated_prompts(K, L, cross):
  """Every prompt of length L over [K], each once: uniform prompts, exactly (a Dataset whose
  answers are unused)."""
  X = jnp.array(list(itertools.product(range(K), repeat=L)), jnp.int32)
  return sampling.Dataset(X[:, -1], ccmc_jax.token_counts(X, K, cross),
                          jnp.zeros(len(X), jnp.int32))


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
  """K = 4, L = 6: mean error over 24 trials at n = 16000 within 25% of the asymptotic
  prediction (exact Fisher information, by enumeration; the tolerance is for the 24 trials'
  spread), and the ratio of the errors at n = 2000 and 16000 close to 8 (1/n decay)."""
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
  exact = enumerated_prompts(K, L, False)  # all K^L prompts: the exact Fisher information
  pred = float(jax.jit(jax.vmap(
      lambda a: theory.predicted_error(a, exact, K, len(exact.y), 16000)))(A).mean())
  assert 0.75 < e_big / pred < 1.33, (e_big, pred)
  assert 5.5 < e_small / e_big < 11.5, (e_small, e_big)


def test_optax_solvers_reach_the_newton_optimum():
  K = 4
  _, data = make_data(K=K, n=2000)
  cap = fit.row_capacity(data.query, K)
  newton = fit_scores(data, K, cap, tol=1e-8).A_hat
  lbfgs = fit_scores_optax(data, K, cap, solver='lbfgs', steps=200).A_hat
  np.testing.assert_allclose(jax.nn.softmax(lbfgs, -1), jax.nn.softmax(newton, -1), atol=1e-3)


def expected_row_nll(a, k, A_true, data):
  """(1/N) sum over prompts with query k of E_{y ~ pi^X(A*)}[-log pi^X_y(a)]: the expected NLL
  of row k, written directly from Lemma 2.2 (no grouping, no hand-written derivative)."""
  log_m = jnp.where(data.counts > 0, jnp.log(jnp.where(data.counts > 0, data.counts, 1.0)),
                    -jnp.inf)
  mine = data.query == k
  pi_true = jax.nn.softmax(A_true[k] + log_m, axis=-1)
  log_pi = jax.nn.log_softmax(a + log_m, axis=-1)
  nll_x = -jnp.sum(jnp.where(pi_true > 0, pi_true * log_pi, 0.0), axis=-1)
  return jnp.sum(jnp.where(mine, nll_x, 0.0)) / data.query.shape[0]


_hessian = jax.jit(jax.hessian(expected_row_nll))
_fisher = jax.jit(theory.fisher_information, static_argnums=(2, 3))
_predicted = jax.jit(theory.predicted_error, static_argnums=(2, 3))


@pytest.mark.parametrize('cross', [False, True])
def test_fisher_information_is_the_exact_hessian(cross):
  """F_k = E[1{x_L = k}(diag pi - pi pi^T)] equals jax.hessian of the expected row NLL at the
  truth, exactly, on the enumeration of all K^L prompts (docs/theory.md Sec. 4); and the
  overlay (1/n) sum_k tr(J_k F_k^+ J_k) equals a NumPy evaluation with J_k = jax.jacobian of
  softmax and numpy.linalg.pinv."""
  K, L, n = 3, 4, 1000
  A = sampling.sample_scores(jax.random.PRNGKey(21), K)
  data = enumerated_prompts(K, L, cross)
  F = np.asarray(_fisher(A, data, K, len(data.y)))
  ref = 0.0
  for k in range(K):
    H = np.asarray(_hessian(A[k], k, A, data), np.float64)
    np.testing.assert_allclose(F[k], H, atol=1e-6)
    assert np.abs(H).max() > 1e-2  # not a trivially zero block
    J = np.asarray(jax.jacobian(jax.nn.softmax)(A[k]), np.float64)
    ref += np.trace(J @ np.linalg.pinv(H, rcond=1e-6, hermitian=True) @ J) / n
  np.testing.assert_allclose(float(_predicted(A, data, K, len(data.y), n)), ref, rtol=1e-4)


def test_monte_carlo_fisher_information_converges_to_the_exact_one():
  """On 40,000 sampled prompts the Monte-Carlo F_k is within 3% (Frobenius) of the exact
  enumeration; the relative standard error is about 1/sqrt(40000/K) ~ 1%."""
  K, L = 3, 4
  A, mc = make_data(K=K, L=L, n=40000, seed=5)
  exact = enumerated_prompts(K, L, False)
  F_mc = np.asarray(_fisher(A, mc, K, fit.row_capacity(mc.query, K)))
  F_ex = np.asarray(_fisher(A, exact, K, len(exact.y)))
  for k in range(K):
    assert np.linalg.norm(F_mc[k] - F_ex[k]) < 0.03 * np.linalg.norm(F_ex[k])


def test_fit_dataset_is_fit_scores_in_one_call():
  K = 4
  _, data = make_data(K=K, n=3000)
  cap = fit.round_capacity(fit.row_capacity(data.query, K))
  for n in (3000, 1234):  # n traced in both: one compilation each
    ref = fit_scores(data, K, cap, n)
    got = fit.fit_dataset(data, K, None if n == 3000 else n)
    np.testing.assert_allclose(got.A_hat, ref.A_hat, atol=1e-6)
    assert int(got.dropped) == 0
  batch = jax.tree.map(lambda *v: jnp.stack(v), data, make_data(K=K, n=3000, seed=1)[1])
  both = fit.fit_dataset(batch, K, 2000)
  np.testing.assert_allclose(both.A_hat[0], fit.fit_dataset(data, K, 2000).A_hat, atol=1e-6)
  for bad, match in [(dict(K=5), 'K=5'), (dict(K=K, n=0), 'n=0'), (dict(K=K, n=3001), 'n=3001')]:
    with pytest.raises(ValueError, match=match):
      fit.fit_dataset(data, **bad)


def test_a_P_where_scores_are_expected_is_refused():
  """The issue's example: p_error(A_hat, P) used to return 0.63 silently instead of the error."""
  K = 4
  A, data = make_data(K=K, n=3000)
  P = jax.nn.softmax(A, -1)
  A_hat = fit.fit_dataset(data, K).A_hat
  good = float(fit.p_error(A_hat, A))
  assert good < 0.05
  np.testing.assert_allclose(float(fit.p_error(A_hat, P_true=P)), good, rtol=1e-6)
  with pytest.raises(ValueError, match='A_true looks like a row-stochastic'):
    fit.p_error(A_hat, P)
  with pytest.raises(ValueError, match='A_hat looks like'):
    fit.centered_w_error(jax.nn.softmax(A_hat, -1), A)
  assert np.isnan(float(jax.jit(fit.p_error)(A_hat, P)))  # under jit: NaN, never a number
  assert float(jax.jit(fit.p_error)(A_hat, A)) == pytest.approx(good, rel=1e-6)
  with pytest.raises(ValueError, match='exactly one'):
    fit.p_error(A_hat)
  with pytest.raises(ValueError, match='same K'):
    jax.jit(fit.p_error)(A_hat, A[:3, :3])
  fn = sampling.uniform_prompt(K, 5)
  with pytest.raises(ValueError, match='log_P looks like'):
    sampling.sample_next_tokens(jax.random.PRNGKey(0), P, jnp.zeros((3, 5), jnp.int32))
  with pytest.raises(ValueError, match='A looks like'):
    sampling.sample_dataset(jax.random.PRNGKey(0), P, 10, 5, fn)
  # ... and scores or weights where the base chain P is expected.
  with pytest.raises(ValueError, match='row-stochastic base chain'):
    ccmc_jax.ccmc_next_token_probs(jnp.abs(A), jnp.array([0, 1, 1]))
  assert bool(model_looks(P)) and not bool(model_looks(A)) and not bool(model_looks(A_hat))
