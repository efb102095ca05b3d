"""The MLE from token ids (ccmc_jax.sparse_fit, ccmc_jax.fit_mle), the sparse sampler and the
large-K theory overlay, each against an independent reference (numpy loops, exact enumeration,
the dense Newton of ccmc_jax.fit, a float64 SciPy optimum)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import ccmc_jax
from ccmc_jax import fit, sampling, sparse_fit, theory

sample = jax.jit(sampling.sample_sparse_dataset, static_argnums=(2, 3, 4))


def _data(K, L, n, cross=False, seed=0, scale=1.0):
  A = sampling.sample_scores(jax.random.PRNGKey(seed), K, scale)
  X, y = sample(jax.random.PRNGKey(seed + 1), A, n, L, cross)
  return A, np.asarray(X), np.asarray(y)


def nll_loop(A, X, y, cross, ridge):
  """float64 objective and gradient, one sample and one position at a time."""
  A = np.asarray(A, np.float64)
  K = A.shape[0]
  f, G = 0.0, np.zeros((K, K))
  for x, answer in zip(X, y):
    q, keys = x[-1], (x[:-1] if cross else x)
    z = np.array([A[q, j] for j in keys])
    s = np.exp(z - z.max())
    s /= s.sum()
    f += z.max() + np.log(np.sum(np.exp(z - z.max()))) - A[q, answer]
    for j, sj in zip(keys, s):
      G[q, j] += sj
    G[q, answer] -= 1.0
  n = len(y)
  return f / n + 0.5 * ridge * np.sum(A * A), G / n + ridge * A


def nll64(A, X, y, cross, ridge=0.0):
  """float64 objective per query row (summed over that row's samples, not divided by n) and
  the full mean objective, vectorised numpy."""
  A = np.asarray(A, np.float64)
  K = A.shape[0]
  q, keys = X[:, -1], (X[:, :-1] if cross else X)
  z = A[q[:, None], keys]
  top = z.max(1)
  per_sample = top + np.log(np.exp(z - top[:, None]).sum(1)) - A[q, y]
  rows = np.bincount(q, weights=per_sample, minlength=K) + 0.5 * ridge * len(y) * (A * A).sum(1)
  return rows, rows.sum() / len(y)


def scipy_optimum(X, y, K, cross, ridge):
  """float64 L-BFGS-B optimum of the objective (gradient from np.add.at), row-centred."""
  q, keys = X[:, -1], (X[:, :-1] if cross else X)
  n = len(y)

  def fg(flat):
    A = flat.reshape(K, K)
    z = A[q[:, None], keys]
    top = z.max(1)
    e = np.exp(z - top[:, None])
    f = np.mean(top + np.log(e.sum(1)) - A[q, y]) + 0.5 * ridge * flat @ flat
    G = np.zeros(K * K)
    np.add.at(G, (q[:, None] * K + keys).ravel(), (e / e.sum(1, keepdims=True)).ravel() / n)
    np.add.at(G, q * K + y, -1.0 / n)
    return f, G + ridge * flat

  res = optimize.minimize(fg, np.zeros(K * K), jac=True, method='L-BFGS-B',
                          options={'maxiter': 5000, 'gtol': 1e-12, 'ftol': 1e-16})
  A = res.x.reshape(K, K)
  return A - A.mean(1, keepdims=True)


@pytest.mark.parametrize('cross', [False, True])
def test_sparse_nll_and_gradient_match_a_loop_and_the_dense_objective(cross):
  K, L = 5, 4
  _, X, y = _data(K, L, 300, cross)
  A = np.random.default_rng(1).normal(size=(K, K)).astype(np.float32)
  f_ref, g_ref = nll_loop(A, X, y, cross, 0.1)
  f, g = sparse_fit.nll_grad(jnp.asarray(A), jnp.asarray(X), jnp.asarray(y), cross, 0.1)
  np.testing.assert_allclose(float(f), f_ref, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g), g_ref, atol=1e-6)
  np.testing.assert_allclose(float(sparse_fit.nll(A, X, y, cross, 0.1)), f_ref, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(sparse_fit.nll)(A, X, y, cross, 0.1), g_ref, atol=1e-6)
  # The dense objective of ccmc_jax.fit on the same samples as count vectors.
  data = sampling.Dataset(jnp.asarray(X[:, -1]), ccmc_jax.token_counts(X, K, cross),
                          jnp.asarray(y))
  grouped, _ = fit.group_by_query(data, K, fit.row_capacity(X[:, -1], K))
  np.testing.assert_allclose(float(fit.nll(A, grouped, 0.1)), f_ref, rtol=1e-5)


@pytest.mark.parametrize('cross', [False, True])
def test_cg_equals_dense_newton_and_the_scipy_optimum(cross):
  K, ridge = 6, 1e-3
  _, X, y = _data(K, 5, 4000, cross, seed=2)
  cg = ccmc_jax.fit_mle(X, y, K, cross=cross, ridge=ridge, method='cg', tol=1e-8)
  newton = ccmc_jax.fit_mle(X, y, K, cross=cross, ridge=ridge, method='newton', tol=1e-8)
  ref = scipy_optimum(X, y, K, cross, ridge)
  np.testing.assert_allclose(cg.A_hat, ref, atol=1e-4)
  np.testing.assert_allclose(newton.A_hat, ref, atol=1e-4)
  # The gauge: zero row means.
  np.testing.assert_allclose(np.asarray(cg.A_hat).mean(1), 0, atol=1e-6)
  assert cg.A_hat.shape == (K, K) and int(cg.iters) >= 2


def test_stopping_rule_bounds_the_objective_gap():
  """Stopped at tol, every row's float64 gap to the SciPy optimum (in nats) is below tol/2
  up to the diagonal preconditioner's slack (factor 2): checked on a row-rich problem
  where the first iterations are far from the optimum."""
  K, ridge = 12, 1e-5
  _, X, y = _data(K, 8, 6000, seed=3, scale=2.0)
  ref = scipy_optimum(X, y, K, False, ridge)
  rows_ref, _ = nll64(ref, X, y, False, ridge)
  for tol in (1.0, 1e-2, 1e-4):
    res = ccmc_jax.fit_mle(X, y, K, ridge=ridge, method='cg', tol=tol)
    rows, _ = nll64(res.A_hat, X, y, False, ridge)
    gap = rows - rows_ref
    assert gap.max() < tol, (tol, gap.max(), int(res.iters))
    assert gap.min() > -1e-3  # nothing beats the optimum (beyond float32 round-off)
  early = ccmc_jax.fit_mle(X, y, K, ridge=ridge, method='cg', tol=0.0, max_iter=1)
  assert (nll64(early.A_hat, X, y, False, ridge)[0] - rows_ref).max() > 1.0  # not trivial


def test_unseen_rows_and_tokens_get_zero_scores():
  K = 6
  X = np.array([[0, 1, 2]] * 30 + [[2, 1, 1]] * 30)  # queries 2 and 1; tokens 3..5 never seen
  y = np.array([0, 1, 2] * 10 + [2, 1, 1] * 10)
  res = ccmc_jax.fit_mle(X, y, K, ridge=1e-4, method='cg', tol=1e-9)
  A = np.asarray(res.A_hat)
  np.testing.assert_allclose(A[[0, 3, 4, 5]], 0, atol=1e-6)  # rows without samples
  np.testing.assert_allclose(A[2, 3:], 0, atol=1e-4)  # tokens never in row 2's prompts
  np.testing.assert_allclose(A.mean(1), 0, atol=1e-6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(K=1), 'K must be'), (dict(K=2.5), 'K must be'), (dict(method='lbfgs'), 'method'),
    (dict(ridge=-1.0), 'ridge'), (dict(tol=float('nan')), 'tol'), (dict(max_iter=0), 'max_iter'),
    (dict(prompts=np.zeros(4, int)), 'prompts must be a 2-D'),
    (dict(prompts=np.zeros((4, 3))), 'integer token ids'),
    (dict(prompts=np.full((4, 3), 9)), r'prompts holds token id 9, outside \[0, K\)'),
    (dict(answers=np.zeros(3, int)), 'answers must have shape'),
    (dict(answers=np.array([0, 0, 0, -1])), 'answers holds token id -1'),
    (dict(answers=np.array([0, 0, 0, 1])), r'answers\[3\] = 1 is not a key token'),
    (dict(prompts=np.zeros((4, 1), int), cross=True), 'L >= 2'),
])
def test_fit_mle_rejects_bad_input(kwargs, match):
  args = dict(prompts=np.zeros((4, 3), int), answers=np.zeros(4, int), K=3)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    ccmc_jax.fit_mle(args.pop('prompts'), args.pop('answers'), args.pop('K'), **args)


@pytest.mark.parametrize('cross', [False, True])
def test_sparse_sampler_follows_the_ccmc_law(cross):
  """Chi-square of the answer counts over every (prompt, answer) cell against the exact CCMC
  law ccmc_next_token_probs (K = 3, L = 3: 27 prompts), within 5 standard deviations."""
  K, L, n = 3, 3, 60000
  A = sampling.sample_scores(jax.random.PRNGKey(5), K, 1.5)
  X, y = sample(jax.random.PRNGKey(6), A, n, L, cross)
  X, y = np.asarray(X), np.asarray(y)
  prompts = np.array(list(itertools.product(range(K), repeat=L)))
  pi = np.asarray(ccmc_jax.ccmc_next_token_probs(jax.nn.softmax(A, -1), prompts, cross))
  code = (X * K ** np.arange(L)[::-1]).sum(1)
  observed = np.zeros((len(prompts), K))
  np.add.at(observed, (code, y), 1)
  expected = observed.sum(1, keepdims=True) * pi
  assert np.all(observed[expected == 0] == 0)  # never a token absent from the keys
  cells = expected > 0
  chi2 = np.sum((observed[cells] - expected[cells]) ** 2 / expected[cells])
  df = cells.sum() - len(prompts)
  assert abs(chi2 - df) < 5 * np.sqrt(2 * df), (chi2, df)
  if cross:
    return
  # Same prompts as sample_dataset with the same key; prefix-stable in n.
  d = sampling.sample_dataset(jax.random.PRNGKey(6), A, 3000, L, sampling.uniform_prompt(K, L),
                              cross)
  np.testing.assert_array_equal(X[:3000, -1], d.query)
  X2, y2 = sample(jax.random.PRNGKey(6), A, 1500, L, cross)
  np.testing.assert_array_equal(X2, X[:1500])
  np.testing.assert_array_equal(y2, y[:1500])


def exact_prediction(A, L, cross):
  """sum_k tr(J_k F_k^+ J_k) by enumerating every uniform prompt (K^(L-1) contexts per row)."""
  K = A.shape[0]
  P = np.exp(A - A.max(1, keepdims=True))
  P /= P.sum(1, keepdims=True)
  total = 0.0
  for k in range(K):
    F = np.zeros((K, K))
    for ctx in itertools.product(range(K), repeat=L - 1):
      m = np.bincount(list(ctx) + ([] if cross else [k]), minlength=K)
      pi = m * P[k] / np.sum(m * P[k])
      F += (np.diag(pi) - np.outer(pi, pi)) / (K ** (L - 1) * K)  # P(x_L = k) = 1/K
    J = np.diag(P[k]) - np.outer(P[k], P[k])
    total += np.trace(J @ np.linalg.pinv(F, rcond=1e-10) @ J)
  return total


@pytest.mark.parametrize('K, L, cross', [(4, 3, False), (4, 3, True), (3, 5, False),
                                         (5, 4, True)])
def test_uniform_theory_equals_exact_enumeration(K, L, cross):
  A = np.random.default_rng(K * L).normal(size=(K, K)) * 1.5
  np.testing.assert_allclose(theory.predicted_error_uniform(A, L, 100.0, cross),
                             exact_prediction(A, L, cross) / 100.0, rtol=1e-5)


def test_uniform_theory_matches_the_monte_carlo_theory():
  """Against theory.predicted_error (Monte-Carlo Fisher, K x K x K) at K = 8, L = 10: within
  2% (the Monte-Carlo error of 1e5 prompts is ~0.5%)."""
  K, L = 8, 10
  A = sampling.sample_scores(jax.random.PRNGKey(0), K)
  X = np.random.default_rng(1).integers(0, K, (100000, L))  # uniform prompts (answers unused)
  mc = sampling.Dataset(jnp.asarray(X[:, -1]), ccmc_jax.token_counts(X, K),
                        jnp.zeros(len(X), jnp.int32))
  predict = jax.jit(theory.predicted_error, static_argnums=(2, 3))
  mc_pred = float(predict(A, mc, K, fit.row_capacity(mc.query, K), 1000))
  np.testing.assert_allclose(theory.predicted_error_uniform(A, L, 1000), mc_pred, rtol=0.02)
  with pytest.raises(ValueError, match='L must be >= 3 for cross'):
    theory.predicted_error_uniform(A, 2, 1000, cross=True)


def test_mle_nonexistence_stays_finite_even_without_ridge():
  """Token 2 is in every prompt of row 0 but never the answer: the MLE does not exist; the
  estimate stays finite and puts (almost) no mass there, with ridge 0 too."""
  X = np.array([[1, 2, 0]] * 50)
  y = np.array([0, 1] * 25)
  for ridge in (0.0, 1e-6):
    res = ccmc_jax.fit_mle(X, y, 3, ridge=ridge, method='cg')
    P = np.asarray(jax.nn.softmax(res.A_hat, -1))
    assert np.all(np.isfinite(P)) and P[0, 2] < 1e-3
    np.testing.assert_allclose(P[0, :2], [0.5, 0.5], atol=1e-3)


def test_cg_stays_finite_and_optimal_on_nearly_separable_copy_data():
  """Answers copied from their prompts with few samples per row and a tiny ridge: scores run
  far apart. Two CG failures seen on an LM's answers (lm_distillation): a row that converged
  to float32 while others went on made Polak-Ribiere's beta 0/0 = NaN (a whole NaN row), and
  a near-zero curvature along a flat direction sent a score to ~1e5 (objective 1241 nats).
  Against the dense Newton solver on the same data, every case of the grid."""
  rng = np.random.default_rng(0)
  for K in (20, 50):
    for _ in range(12):
      n = int(rng.integers(20, 300))
      X = rng.integers(0, K, (n, 10))
      y = X[np.arange(n), rng.integers(0, 10, n)]
      for ridge in (1e-6, 1e-8):
        cg = ccmc_jax.fit_mle(X, y, K, ridge=ridge, method='cg')
        newton = ccmc_jax.fit_mle(X, y, K, ridge=ridge, method='newton')
        assert np.all(np.isfinite(np.asarray(cg.A_hat))), (K, n, ridge)
        gap = float(sparse_fit.nll(cg.A_hat, X, y, ridge=ridge)
                    - sparse_fit.nll(newton.A_hat, X, y, ridge=ridge))
        assert gap < 1e-3, (K, n, ridge, gap)
