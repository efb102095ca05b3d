"""Single-trajectory generation: ``x_{t+1} ~ pi^{X_t}``, appended to a growing (or sliding) context.

References: paper Sec. 4 (one trajectory; distribution collapse), Fig. 5.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ccmc_jax import checks
from ccmc_jax import model
from ccmc_jax import sampling
from ccmc_jax.sampling import Dataset


class Trajectory(NamedTuple):
  """``tokens`` (T,) generated tokens; ``freqs`` (T, K) context frequencies after each step
  (count / current context length), or (1, K) final frequencies when ``trace=False``."""
  tokens: jax.Array
  freqs: jax.Array


def generate(key, log_P, X0, T, window=None, trace=True):
  """Generate ``T`` tokens from the CCMC starting at prompt ``X0`` with ``lax.scan``.

  The state is the count vector of the context and the last token, updated in O(K) per step
  (the prompt is never re-scanned). The T uniforms of the inverse-CDF draws come from one call.

  Args:
    key: PRNG key.
    log_P: (K, K) log base chain (or scores ``A = W^T``); ``-inf`` entries allowed (e.g. a zero
      diagonal). Not ``P`` itself (refused when called eagerly).
    X0: (L0,) int initial prompt; its last token is the first query. Entries equal to -1 are
      padding (zero counts) for a growing context; the last entry must be a real token.
    T: number of tokens to generate (static).
    window: None for a growing context; an int ``L`` keeps only the last ``L`` tokens.
    trace: return per-step frequencies (T, K); False returns only the final ones (1, K).
  Returns:
    Trajectory.
  Raises:
    ValueError: ``key`` not a PRNG key, ``log_P`` not (K, K), ``X0`` not 1-D integer ids, ``T`` not an int >= 1,
      ``window`` not None or an int >= 1; called eagerly, NaN or ``+inf`` in ``log_P``, a
      row-stochastic ``log_P`` (``P`` itself), ids of ``X0`` outside ``[-1, K)`` or a padding
      last entry. Under ``jit`` these values are not checked: NaN scores draw token ``K - 1``.
  References: paper Sec. 4; ``docs/theory.md`` Sec. 7 (facts 1-4).
  """
  checks.key('key', key)
  K = sampling.check_score_matrix(log_P, 'log_P')
  checks.token_ids('X0', X0, K, ndim=1, pad=True)
  host = checks.concrete(X0)
  if host is not None and host[-1] < 0:
    raise ValueError('X0 must end with a real token (its last entry is the first query), got '
                     'padding -1')
  T = checks.size('T', T)
  if window is not None:
    window = checks.size('window', window)
  log_P = jnp.asarray(log_P, jnp.float32)
  X0 = jnp.asarray(X0, jnp.int32)
  K = log_P.shape[-1]
  counts0 = jax.nn.one_hot(X0, K, dtype=jnp.float32).sum(0)
  if window is None:
    buf0 = jnp.zeros((1,), jnp.int32)
  else:
    # Ring buffer of the last `window` tokens; -1 marks an empty slot.
    buf0 = jnp.full((window,), -1, jnp.int32).at[window - min(window, X0.shape[0]):].set(
        X0[-window:])
    counts0 = jax.nn.one_hot(buf0, K, dtype=jnp.float32).sum(0)

  def step(carry, xs):
    counts, last, buf = carry
    t, u = xs
    y = sampling.categorical_from_uniform(u, model.ccmc_log_probs(log_P[last], counts))
    counts = counts.at[y].add(1.0)
    if window is not None:
      slot = t % window
      counts = counts - jax.nn.one_hot(buf[slot], K, dtype=jnp.float32)  # -1 subtracts nothing
      buf = buf.at[slot].set(y)
    freqs = counts / counts.sum()
    return (counts, y, buf), (y, freqs) if trace else y

  xs = (jnp.arange(T), jax.random.uniform(key, (T,)))
  (counts, _, _), out = jax.lax.scan(step, (counts0, X0[-1], buf0), xs)
  if trace:
    return Trajectory(*out)
  return Trajectory(out, (counts / counts.sum())[None])


def as_dataset(X0, tokens, K):
  """The ``T`` (context, next token) pairs of a growing-context trajectory, as a Dataset.

  Pair ``t`` has query ``x_t`` (the last context token), counts of ``X0 + tokens[:t]`` and
  answer ``tokens[t]``, so :func:`ccmc_jax.fit.fit_scores` learns ``W`` from one trajectory.
  Raises ValueError for ``X0``/``tokens`` that are not 1-D integer ids (``tokens`` non-empty)
  or, called eagerly, ids outside ``[-1, K)`` / ``[0, K)``.
  References: paper Sec. 4; ``docs/theory.md`` Sec. 7 (estimation from a single trajectory).
  """
  K = checks.size('K', K)
  checks.token_ids('X0', X0, K, ndim=1, pad=True)
  checks.token_ids('tokens', tokens, K, ndim=1)
  X0 = jnp.asarray(X0, jnp.int32)
  tokens = jnp.asarray(tokens, jnp.int32)
  counts0 = jax.nn.one_hot(X0, K, dtype=jnp.float32).sum(0)
  after = counts0 + jnp.cumsum(jax.nn.one_hot(tokens, K, dtype=jnp.float32), axis=0)
  before = jnp.concatenate([counts0[None], after[:-1]], axis=0)
  query = jnp.concatenate([X0[-1:], tokens[:-1]])
  return Dataset(query, before, tokens)


def top_shares(freqs, k=2):
  """Sum of the ``k`` largest frequencies (top-1, top-2 shares of the context)."""
  return jax.lax.top_k(freqs, k)[0].sum(-1)


def initial_prompt(key, K, L0, length=None):
  """X0: a random permutation of all K tokens, then ``L0 - K`` uniform tokens (L0 < K: the
  first L0 tokens of the permutation): every row and column of P can matter from the start.

  Args:
    key: PRNG key.
    K: vocabulary size (static).
    L0: prompt length (traced allowed when ``length`` is given).
    length: static padded length >= L0: the prompt is right-aligned and preceded by ``-1``
      entries, which ``jax.nn.one_hot`` maps to zero counts, so ``trajectory.generate`` (growing
      context) sees exactly the unpadded prompt. None: ``length = L0``.
  Returns:
    (length,) int32; uniform token i comes from fold_in(key, i), so X0 does not depend on
    ``length``.
  """
  length = L0 if length is None else length
  p_key, u_key = jax.random.split(key)
  perm = jax.random.permutation(p_key, K).astype(jnp.int32)
  extra = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(u_key, i), (), 0, K,
                                                jnp.int32))(jnp.arange(length))
  base = jnp.concatenate([perm, extra])[:length]
  idx = jnp.arange(length) - (length - L0)
  return jnp.where(idx >= 0, base[jnp.clip(idx, 0)], -1)


def collapse_summary(freqs, threshold):
  """Winner count, top shares and collapse time of one trajectory's running frequencies.

  Args:
    freqs: (T, K) running frequencies; row ``t - 1`` is the context after step ``t``.
    threshold: winner threshold in (0, 1).
  Returns:
    dict of scalars: ``winners`` (#tokens with final frequency > threshold), ``top1``, ``top2``
    (shares of the largest one / two final frequencies), ``collapse_time`` (the first step
    ``t`` in 1..T from which the set of tokens above ``threshold`` equals the final set up to
    ``T``; 1 if it never changes).
  References: paper Sec. 4 (winner tokens); ``docs/theory.md`` Sec. 7.
  """
  freqs = jnp.asarray(freqs)
  T = freqs.shape[0]
  above = freqs > threshold
  changed = jnp.any(above != above[-1], axis=-1)
  last_change = jnp.max(jnp.where(changed, jnp.arange(T), -1))  # 0-based, -1 if never
  top = -jnp.sort(-freqs[-1])
  return {'winners': above[-1].sum(), 'top1': top[0], 'top2': top[:2].sum(),
          'collapse_time': last_change + 2}
