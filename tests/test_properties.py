"""Property tests (hypothesis, bounded examples): the CCMC law pi^X (paper Lemma 2.2) and its
equivalence with attention hold for every input, not only the hand-picked ones; plus the
numerical-safety limits (K up to 1000, L up to 10^4, weight scale up to 50) for the sampler and
the fit."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

import ccmc_jax
from ccmc_jax import fit, model, sampling

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)

# Jitted once per (K, L) shape; shapes come from small sets so examples reuse compilations.
_ccmc = jax.jit(lambda W, X, cross: ccmc_jax.ccmc_next_token_probs(
    ccmc_jax.transition_matrix(W), X, cross), static_argnums=2)
_attention = jax.jit(lambda W, X, cross: ccmc_jax.attention_next_token_probs(W, X, cross=cross),
                     static_argnums=2)
_P = jax.jit(ccmc_jax.transition_matrix)


@st.composite
def problems(draw, Ks=(2, 7), Ls=(2, 12), scales=(0.1, 1.0, 5.0, 50.0)):
  """(W, X, cross): weights W ~ scale N(0, 1), a prompt of length L >= 2 over K tokens."""
  K = draw(st.sampled_from(Ks))
  L = draw(st.sampled_from(Ls))
  seed = draw(st.integers(0, 2 ** 31 - 1))
  scale = draw(st.sampled_from(scales))
  rng = np.random.default_rng(seed)
  W = (scale * rng.standard_normal((K, K))).astype(np.float32)
  # Prompts over a random subset of the vocabulary, so that absent tokens occur.
  vocab = rng.permutation(K)[:rng.integers(1, K + 1)]
  X = rng.choice(vocab, size=L).astype(np.int32)
  return W, X, draw(st.booleans())


@SETTINGS
@given(problems())
def test_pi_is_a_distribution_supported_on_the_keys(problem):
  W, X, cross = problem
  for pi in (np.asarray(_ccmc(W, X, cross)), np.asarray(_attention(W, X, cross))):
    assert np.all(np.isfinite(pi)) and np.all(pi >= 0)
    np.testing.assert_allclose(pi.sum(), 1.0, rtol=1e-5)
    keys = X[:-1] if cross else X
    absent = np.setdiff1d(np.arange(W.shape[0]), keys)
    assert np.all(pi[absent] == 0.0)


@SETTINGS
@given(problems(), st.integers(0, 2 ** 31 - 1))
def test_pi_ignores_the_order_of_non_query_tokens(problem, seed):
  W, X, cross = problem
  perm = np.random.default_rng(seed).permutation(len(X) - 1)
  Y = np.concatenate([X[:-1][perm], X[-1:]])
  np.testing.assert_allclose(_ccmc(W, Y, cross), _ccmc(W, X, cross), atol=1e-6)
  np.testing.assert_allclose(_attention(W, Y, cross), _attention(W, X, cross), atol=1e-5)


@SETTINGS
@given(problems(scales=(0.1, 1.0, 5.0)), st.integers(0, 2 ** 31 - 1))
def test_pi_is_invariant_to_per_row_shifts_of_the_scores(problem, seed):
  """A[i, :] + c_i leaves P and pi unchanged; with E = I, A = W^T, so W[:, i] gets + c_i."""
  W, X, cross = problem
  c = np.random.default_rng(seed).uniform(-20, 20, W.shape[0]).astype(np.float32)
  W_shift = W + c[None, :]
  np.testing.assert_allclose(model.scores(W_shift), model.scores(W) + c[:, None], atol=1e-4)
  np.testing.assert_allclose(_P(W_shift), _P(W), atol=1e-5)
  np.testing.assert_allclose(_ccmc(W_shift, X, cross), _ccmc(W, X, cross), atol=1e-5)
  np.testing.assert_allclose(_attention(W_shift, X, cross), _attention(W, X, cross), atol=1e-5)


@SETTINGS
@given(problems(Ks=(3, 50), Ls=(2, 100), scales=(0.1, 1.0, 5.0)))
def test_attention_equals_ccmc(problem):
  W, X, cross = problem
  np.testing.assert_allclose(_attention(W, X, cross), _ccmc(W, X, cross), atol=1e-5)


@SETTINGS
@given(problems(Ks=(3, 50), Ls=(2, 100), scales=(50.0,)))
def test_attention_equals_log_space_ccmc_at_scale_50(problem):
  """At scale 50, P = softmax(A) underflows in float32; the log-space CCMC from the scores
  (``ccmc_log_probs`` of the rows of log_softmax(A)) still equals attention."""
  W, X, cross = problem
  log_P = jax.nn.log_softmax(model.scores(W), axis=-1)
  pi = jnp.exp(model.ccmc_log_probs(log_P[X[-1]], model.token_counts(X, W.shape[0], cross)))
  np.testing.assert_allclose(_attention(W, X, cross), pi, atol=1e-5)


def test_sampler_and_fit_are_safe_at_scale_50():
  """Scale 50: most of P underflows to 0 in float32; sampled tokens stay in the support, the
  fit and its error stay finite, and the error is small where the data are plentiful."""
  K, L, n = 8, 10, 5000
  key = jax.random.PRNGKey(3)
  A = sampling.sample_scores(key, K, 50.0)
  data = sampling.sample_dataset(jax.random.fold_in(key, 1), A, n, L,
                                 sampling.uniform_prompt(K, L))
  assert bool(jnp.all(data.counts[jnp.arange(n), data.y] > 0))  # y is always a key token
  capacity = fit.round_capacity(fit.row_capacity(data.query, K))
  res = fit.fit_scores(data, K, capacity)
  err = float(fit.p_error(res.A_hat, A))
  assert np.all(np.isfinite(np.asarray(res.A_hat))) and np.isfinite(err)
  assert err < 0.2


def test_sampler_is_safe_at_K_1000_L_10000():
  K, L, n = 1000, 10000, 64
  key = jax.random.PRNGKey(4)
  A = sampling.sample_scores(key, K, 50.0)
  data = sampling.sample_dataset(jax.random.fold_in(key, 1), A, n, L,
                                 sampling.uniform_prompt(K, L))
  assert data.counts.shape == (n, K)
  np.testing.assert_array_equal(np.asarray(data.counts.sum(-1)), L)
  assert bool(jnp.all((data.y >= 0) & (data.y < K)))
  assert bool(jnp.all(data.counts[jnp.arange(n), data.y] > 0))
