"""Positional encoding (paper Definition 2.4 / Lemma 2.5): the position-weighted CCMC against a
literal NumPy attention loop, its gauge and the joint MLE (the experiment's trials and figure:
test_trials.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import fit, model, positional, sampling



def attention_loop(W, E, C, pos, X, cross):
  """Literal 1-layer attention with positional embeddings, one prompt at a time: keys
  e_{x_i} + p_i, query e_{x_L} + p_L, softmax over positions, output C sum_i s_i (e_{x_i} + p_i)."""
  out = []
  for x in X:
    emb = E[x] + pos
    keys = emb[:-1] if cross else emb
    z = keys @ W @ emb[-1]
    s = np.exp(z - z.max())
    s /= s.sum()
    out.append(C @ (s @ keys))
  return np.array(out)


def generic_embeddings(rng, K, L, d_pos):
  """E with orthonormal rows and positions in their orthogonal complement: C = E satisfies
  C E^T = I and C p_i = 0."""
  Q, _ = np.linalg.qr(rng.normal(size=(K + d_pos, K + d_pos)))
  E = Q[:, :K].T
  pos = rng.normal(size=(L, d_pos)) @ Q[:, K:].T
  return E, pos


def test_positional_ccmc_equals_numpy_attention_loop():
  rng = np.random.default_rng(0)
  K, L, d_pos = 4, 6, 3
  E, pos = generic_embeddings(rng, K, L, d_pos)
  W = rng.normal(size=(K + d_pos, K + d_pos))
  X = rng.integers(0, K, size=(40, L))
  X[0] = 2  # a prompt made of one token
  P_eff, log_w = map(np.asarray, positional.attention_to_positional_ccmc(W, E, pos))
  q = X[:, -1]
  for cross in (False, True):
    ref = attention_loop(W, E, E, pos, X, cross)
    np.testing.assert_allclose(ref.sum(1), 1, rtol=1e-10)
    got_w = model.positional_ccmc_next_token_probs(P_eff, X, np.exp(log_w)[q], cross)
    got_log = np.exp(positional.positional_log_probs(np.log(P_eff), log_w[q], X, cross))
    got_att = model.attention_next_token_probs(W, X, E, cross, pos=pos)
    for got in (got_w, got_log, got_att):
      np.testing.assert_allclose(got, ref, atol=2e-6)


def test_learnable_bias_equals_numpy_attention_loop():
  """embed_position_bias realises pi_k ∝ P[x_L, k] sum_{i: x_i = k} exp(b_i) as attention."""
  rng = np.random.default_rng(1)
  K, L = 5, 7
  A, b = rng.normal(size=(K, K)), rng.normal(size=L)
  X = rng.integers(0, K, size=(30, L))
  W, E, pos = map(np.asarray, positional.embed_position_bias(A, b))
  C = np.eye(K, K + 1)
  P = np.exp(A) / np.exp(A).sum(1, keepdims=True)
  for cross in (False, True):
    ref = attention_loop(W, E, C, pos, X, cross)
    direct = []
    for x in X:  # the positional CCMC formula, literally
      mass = np.zeros(K)
      for i, t in enumerate(x[:-1] if cross else x):
        mass[t] += np.exp(b[i])
      v = mass * P[x[-1]]
      direct.append(v / v.sum())
    np.testing.assert_allclose(ref, direct, atol=1e-6)  # W, pos are float32
    np.testing.assert_allclose(np.exp(positional.positional_log_probs(A, b, X, cross)), direct,
                               atol=2e-6)


def test_log_probs_normalised_zero_off_keys_and_gauge_invariant():
  rng = np.random.default_rng(2)
  K, L = 4, 5
  A, b = rng.normal(size=(K, K)), rng.normal(size=L)
  X = rng.integers(0, K, size=(50, L))
  for cross in (False, True):
    lp = np.asarray(positional.positional_log_probs(A, b, X, cross))
    np.testing.assert_allclose(np.exp(lp).sum(1), 1, rtol=1e-5)
    keys = X[:, :-1] if cross else X
    present = np.stack([np.isin(np.arange(K), k) for k in keys])
    assert np.all(np.isfinite(lp) == present)
    # Gauge: a shift per row of A and a global shift of b (w -> e^c w) change nothing ...
    shifted = positional.positional_log_probs(A + rng.normal(size=(K, 1)), b + 3.7, X, cross)
    np.testing.assert_allclose(np.exp(shifted), np.exp(lp), atol=1e-6)
    # ... while rescaling b does (so the normalised weights are the identifiable quantity).
    other = positional.positional_log_probs(A, 2 * b, X, cross)
    assert np.abs(np.exp(other) - np.exp(lp)).max() > 1e-2
  np.testing.assert_allclose(positional.w_error(b + 5.0, b), 0, atol=1e-12)


def test_newton_statistics_match_autodiff():
  K, L, n = 3, 5, 300
  key = jax.random.PRNGKey(3)
  A = jax.random.normal(key, (K, K))
  b = positional.sample_position_bias(jax.random.fold_in(key, 1), L)
  for cross in (True,):  # cross: the b block (L - 1 keys) differs from L; self shares the code
    data = positional.sample_positional_dataset(jax.random.fold_in(key, 2), A, b, n, L,
                                                sampling.uniform_prompt(K, L), cross)
    Lk = L - int(cross)
    theta = jnp.concatenate([0.5 * A.reshape(-1), 0.3 * b[:Lk]])
    keys = data.X[:, :-1] if cross else data.X
    loss, g, H = jax.jit(lambda t: positional._stats(  # summed over 3 chunks of 100
        t, keys, data.X[:, -1], data.y, jnp.full(n, 1 / n), K, 0.0, 3, 100))(theta)
    f = lambda t: positional.nll(t[:K * K].reshape(K, K), t[K * K:], data, cross=cross)
    np.testing.assert_allclose(loss, f(theta), rtol=1e-5)
    np.testing.assert_allclose(g, jax.jit(jax.grad(f))(theta), atol=1e-6)
    np.testing.assert_allclose(H, jax.jit(jax.hessian(f))(theta), atol=1e-6)


def test_fit_recovers_P_and_normalised_w_and_n_is_a_prefix():
  K, L, N = 3, 4, 5000
  key = jax.random.PRNGKey(4)
  A = jax.random.normal(key, (K, K))
  b = positional.sample_position_bias(key, L, kind='recency')  # w/sum(w) = .07 .14 .27 .52
  data = positional.sample_positional_dataset(jax.random.fold_in(key, 2), A, b, N, L,
                                              sampling.uniform_prompt(K, L))
  fit_n = jax.jit(lambda n: positional.fit_positional(data, K, n))
  r = fit_n(N)
  assert int(r.invalid) == 0 and int(r.iters) < 50
  p_err, w_err = float(fit.p_error(r.A_hat, A)), float(positional.w_error(r.b_hat, b))
  # Over 30 draws of A* at this (K, L, n, b*) the errors average 0.011 (P) and 0.0068 (w), max
  # 0.069 and 0.031 (the dominant query-position weight leaves little information on the
  # others); this seed gives 0.024 and 0.011. Ignoring the positions (b = 0) gives w error 0.12.
  assert p_err < 0.05, p_err
  assert w_err < 0.03, w_err
  assert float(positional.w_error(jnp.zeros(L), b)) > 0.1
  # Gauge-fixed output, and the MLE beats the truth on its own data.
  np.testing.assert_allclose(r.A_hat.mean(1), 0, atol=1e-5)
  np.testing.assert_allclose(r.b_hat.mean(), 0, atol=1e-5)
  assert positional.nll(r.A_hat, r.b_hat, data) <= positional.nll(A, b, data)
  # A traced n (padding, chunking) is the same fit as the prefix of the data.
  n = 777
  prefix = positional.PositionalDataset(data.X[:n], data.y[:n])
  ref = jax.jit(lambda d: positional.fit_positional(d, K))(prefix)
  got = fit_n(n)
  np.testing.assert_allclose(jax.nn.softmax(got.A_hat), jax.nn.softmax(ref.A_hat), atol=1e-4)
  np.testing.assert_allclose(positional.normalized_weights(got.b_hat),
                             positional.normalized_weights(ref.b_hat), atol=1e-4)
