"""ccmc_jax.trajectory against literal Python loops (paper Sec. 4; docs/theory.md Sec. 7):
`generate` with a growing and with a sliding context, `as_dataset`, and the exact facts 1
(absent tokens never appear) and 3 (zero diagonal: no token above ~1/2)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ccmc_jax
from ccmc_jax import trajectory

K, T = 4, 150


@functools.lru_cache(maxsize=None)
def _generate(T, window, trace):
  """One compilation per (T, window, trace); eager scans dispatch slowly."""
  return jax.jit(lambda key, log_P, X0: trajectory.generate(key, log_P, X0, T, window, trace))


def loop_generate(key, log_P, X0, T, window=None):
  """The definition, one step at a time: context = X0 followed by the generated tokens (its
  last ``window`` tokens when sliding); ``x_{t+1}`` is the inverse-CDF draw of
  ``pi^X = m_j P[x_t, j] / sum_l m_l P[x_t, l]`` (Lemma 2.2) at the step's uniform."""
  P = np.exp(np.asarray(log_P, np.float64))
  u = np.asarray(jax.random.uniform(key, (T,)), np.float64)  # generate's documented uniforms
  seq = [int(x) for x in X0]
  tokens, freqs = [], []
  for t in range(T):
    context = seq if window is None else seq[-window:]
    m = np.bincount(context, minlength=K).astype(np.float64)
    pi = m * P[seq[-1]]
    cdf = np.cumsum(pi / pi.sum())
    y = min(int(np.sum(cdf / cdf[-1] <= u[t])), K - 1)
    seq.append(y)
    tokens.append(y)
    context = seq if window is None else seq[-window:]
    freqs.append(np.bincount(context, minlength=K) / len(context))
  return np.array(tokens), np.array(freqs)


def random_log_P(seed, zero_diag=False):
  A = ccmc_jax.sample_scores(jax.random.PRNGKey(seed), K, zero_diag=zero_diag)
  return jax.nn.log_softmax(A, axis=-1)


@pytest.mark.parametrize('X0, window', [
    ([0, 2, 2, 1], None),            # growing context; token 3 absent from X0
    ([3, 0, 1, 2, 2, 1], 3),         # sliding window shorter than X0
    ([1, 0, 1], 5),                  # sliding window longer than X0 (fills up first)
])
def test_generate_matches_a_literal_loop(X0, window):
  key = jax.random.PRNGKey(11)
  log_P = random_log_P(5)
  out = _generate(T, window, True)(key, log_P, jnp.array(X0))
  tokens, freqs = loop_generate(key, log_P, X0, T, window)
  np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
  np.testing.assert_allclose(np.asarray(out.freqs), freqs, rtol=1e-6, atol=1e-7)
  if window is None:  # fact 1: a token absent from X0 never appears in a growing context
    assert np.all(tokens != 3)
  else:  # the window does evict tokens: the sliding run differs from the growing one
    grown, _ = loop_generate(key, log_P, X0, T)
    assert np.any(grown != tokens)


def test_generate_without_trace_returns_the_final_frequencies():
  key, log_P, X0 = jax.random.PRNGKey(2), random_log_P(6), jnp.array([0, 1, 2, 3])
  full = _generate(T, None, True)(key, log_P, X0)
  last = _generate(T, None, False)(key, log_P, X0)
  np.testing.assert_array_equal(last.tokens, full.tokens)
  np.testing.assert_allclose(last.freqs[0], full.freqs[-1], rtol=1e-6)


def test_zero_diagonal_no_repeats_and_the_half_bound():
  """Fact 3: with P[i, i] = 0 no token follows itself, so a token's count after T steps is at
  most m_j(X0) + ceil(T/2), i.e. frequency <= (m_j(X0) + ceil(T/2)) / (L0 + T)."""
  X0 = np.array([0, 1, 2, 3])
  out = _generate(T, None, True)(jax.random.PRNGKey(4), random_log_P(7, zero_diag=True),
                                 jnp.asarray(X0))
  seq = np.r_[X0[-1], np.asarray(out.tokens)]
  assert np.all(seq[1:] != seq[:-1])
  bound = (np.bincount(X0, minlength=K) + math.ceil(T / 2)) / (len(X0) + T)
  assert np.all(np.asarray(out.freqs[-1]) <= bound + 1e-6)


def test_as_dataset_matches_a_literal_loop():
  X0 = [2, 0, 2]
  tokens = np.array([1, 1, 3, 0, 2, 1])
  data = trajectory.as_dataset(jnp.array(X0), jnp.asarray(tokens), K)
  seq = list(X0)
  for t, y in enumerate(tokens):
    assert int(data.query[t]) == seq[-1]
    np.testing.assert_array_equal(np.asarray(data.counts[t]), np.bincount(seq, minlength=K))
    assert int(data.y[t]) == y
    seq.append(int(y))
  assert data.query.shape == (len(tokens),)
