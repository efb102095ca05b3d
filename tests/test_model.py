"""The model against independent references: a literal per-position numpy attention loop, the
CCMC formula written out by hand, and the paper's Fig. 1 example."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ccmc_jax
from ccmc_jax import model


def numpy_attention(W, x, E=None, cross=False):
  """Literal 1-layer attention for ONE prompt, position by position (float64)."""
  W = np.asarray(W, np.float64)
  E = np.eye(W.shape[0]) if E is None else np.asarray(E, np.float64)
  K = E.shape[0]
  q = E[x[-1]]
  keys = list(x[:-1]) if cross else list(x)
  s = np.array([E[t] @ W @ q for t in keys])
  s = np.exp(s - s.max())
  s /= s.sum()
  C = np.linalg.pinv(E.T)  # C E^T = I
  out = C @ np.sum([si * E[t] for si, t in zip(s, keys)], axis=0)
  assert out.shape == (K,)
  return out


def numpy_ccmc(P, x, cross=False):
  keys = list(x[:-1]) if cross else list(x)
  m = np.bincount(keys, minlength=P.shape[0]).astype(np.float64)
  v = m * np.asarray(P, np.float64)[x[-1]]
  return v / v.sum()


def test_transition_matrix_is_row_softmax_of_scores():
  rng = np.random.default_rng(0)
  W, E = rng.normal(size=(4, 4)), rng.normal(size=(5, 4))
  P = np.asarray(ccmc_jax.transition_matrix(W, E))
  for i in range(5):
    s = np.array([E[j] @ W @ E[i] for j in range(5)])
    np.testing.assert_allclose(P[i], np.exp(s) / np.exp(s).sum(), rtol=1e-5)
  np.testing.assert_allclose(P.sum(1), 1, rtol=1e-6)
  np.testing.assert_allclose(ccmc_jax.transition_matrix(W), jax.nn.softmax(W.T, -1), rtol=1e-6)


@pytest.mark.parametrize('cross', [False, True])
def test_attention_matches_literal_numpy_loop(cross):
  rng = np.random.default_rng(1)
  K, L = 6, 7
  W = rng.normal(size=(K, K)) * 2
  X = rng.integers(0, K, size=(20, L))
  got = np.asarray(ccmc_jax.attention_next_token_probs(W.astype(np.float32), X, cross=cross))
  want = np.stack([numpy_attention(W, x, cross=cross) for x in X])
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_attention_with_embeddings_matches_numpy():
  rng = np.random.default_rng(2)
  K, d, L = 4, 6, 5
  E, W = rng.normal(size=(K, d)), rng.normal(size=(d, d))
  X = rng.integers(0, K, size=(10, L))
  got = np.asarray(ccmc_jax.attention_next_token_probs(W.astype(np.float32), X,
                                                       E=E.astype(np.float32)))
  want = np.stack([numpy_attention(W, x, E=E) for x in X])
  np.testing.assert_allclose(got, want, atol=2e-5)
  # ... and the CCMC route through P = transition_matrix(W, E) gives the same law (Lemma 2.2).
  ccmc = ccmc_jax.ccmc_next_token_probs(ccmc_jax.transition_matrix(W, E), X)
  np.testing.assert_allclose(ccmc, want, atol=2e-5)


@pytest.mark.parametrize('K,L', [(2, 1), (3, 4), (10, 30), (50, 100), (50, 7)])
@pytest.mark.parametrize('cross', [False, True])
def test_attention_equals_ccmc(K, L, cross):
  if cross and L < 2:
    pytest.skip('cross-attention needs L >= 2')
  key = jax.random.PRNGKey(K * 1000 + L)
  kw, kx = jax.random.split(key)
  W = 3.0 * jax.random.normal(kw, (K, K))
  X = jax.random.randint(kx, (200, L), 0, K)
  att = ccmc_jax.attention_next_token_probs(W, X, cross=cross)
  ccmc = ccmc_jax.ccmc_next_token_probs(ccmc_jax.transition_matrix(W), X, cross=cross)
  assert float(jnp.max(jnp.abs(att - ccmc))) <= 1e-5
  np.testing.assert_allclose(ccmc[:5], np.stack([numpy_ccmc(np.asarray(
      ccmc_jax.transition_matrix(W)), np.asarray(x), cross) for x in X[:5]]), atol=1e-6)


def test_figure1_example():
  """K = 3, X = [1, 2, 1] (1-indexed): m = (2, 1, 0)/3, pi ∝ (2 P_11, P_12, 0)."""
  W = jnp.array([[0.3, -1.0, 0.5], [1.2, 0.1, -0.4], [0.0, 0.7, 0.2]])
  P = np.asarray(ccmc_jax.transition_matrix(W))
  X = jnp.array([0, 1, 0])
  np.testing.assert_allclose(ccmc_jax.token_counts(X, 3) / 3, [2 / 3, 1 / 3, 0])
  v = np.array([2 * P[0, 0], P[0, 1], 0.0])
  np.testing.assert_allclose(ccmc_jax.ccmc_next_token_probs(P, X), v / v.sum(), rtol=1e-6)


def test_exhaustive_small_K_sums_and_support():
  """Every prompt of length 3 over K = 3: pi sums to 1 and is zero exactly off the keys."""
  P = ccmc_jax.transition_matrix(jax.random.normal(jax.random.PRNGKey(3), (3, 3)))
  X = jnp.array(list(itertools.product(range(3), repeat=3)))
  for cross in (False, True):
    pi = np.asarray(ccmc_jax.ccmc_next_token_probs(P, X, cross=cross))
    np.testing.assert_allclose(pi.sum(1), 1, rtol=1e-6)
    keys = np.asarray(X[:, :-1] if cross else X)
    present = np.stack([np.isin(np.arange(3), k) for k in keys])
    assert np.all((pi > 0) == present)


def test_positional_ccmc_matches_numpy_loop():
  rng = np.random.default_rng(4)
  K, L = 5, 6
  P = np.asarray(ccmc_jax.transition_matrix(rng.normal(size=(K, K))))
  w = np.exp(rng.normal(size=L))
  X = rng.integers(0, K, size=(15, L))
  for cross in (False, True):
    got = np.asarray(ccmc_jax.positional_ccmc_next_token_probs(P, X, w, cross=cross))
    for x, g in zip(X, got):
      mass = np.zeros(K)
      for i, t in enumerate(x[:-1] if cross else x):
        mass[t] += w[i]
      v = mass * P[x[-1]]
      np.testing.assert_allclose(g, v / v.sum(), rtol=1e-5, atol=1e-7)
  # Equal weights reduce to the plain CCMC.
  np.testing.assert_allclose(ccmc_jax.positional_ccmc_next_token_probs(P, X, np.ones(L)),
                             ccmc_jax.ccmc_next_token_probs(P, X), rtol=1e-5)


def test_zero_diagonal_and_check_stochastic():
  P = np.asarray(ccmc_jax.transition_matrix(np.random.default_rng(5).normal(size=(4, 4))))
  Z = np.asarray(ccmc_jax.zero_diagonal(P))
  np.testing.assert_allclose(np.diag(Z), 0)
  np.testing.assert_allclose(Z.sum(1), 1, rtol=1e-6)
  np.testing.assert_allclose(Z[0, 1] / Z[0, 2], P[0, 1] / P[0, 2], rtol=1e-5)
  model.check_stochastic(Z)
  with pytest.raises(ValueError, match='row-stochastic'):
    model.check_stochastic(P * 1.1)
  with pytest.raises(ValueError, match='square'):
    model.check_stochastic(P[:3])
  with pytest.raises(ValueError, match='non-negative'):
    model.check_stochastic(-P)


def test_large_scores_stay_finite():
  """Weight scale 50, K = 1000, L = 10^4: no NaN/inf, absent tokens exactly 0."""
  K, L = 1000, 10000
  key = jax.random.PRNGKey(6)
  W = 50.0 * jax.random.normal(key, (K, K))
  X = jax.random.randint(jax.random.fold_in(key, 1), (2, L), 0, K // 2)
  pi = ccmc_jax.ccmc_next_token_probs(ccmc_jax.transition_matrix(W), X)
  assert bool(jnp.all(jnp.isfinite(pi)))
  np.testing.assert_allclose(pi.sum(-1), 1, rtol=1e-5)
  assert float(pi[:, K // 2:].max()) == 0.0
  att = ccmc_jax.attention_next_token_probs(W, X)
  assert bool(jnp.all(jnp.isfinite(att)))
