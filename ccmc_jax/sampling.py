"""Sampling: ground-truth scores, IID prompts and next tokens ``y ~ pi^X``.

Randomness is explicit: every sampler takes a PRNG key first. Sample ``t`` of a data set is
drawn from ``fold_in(key, t)``, so the first ``n`` samples do not depend on how many are drawn
in total: a data set of size ``n`` is the prefix of any larger one drawn with the same key.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ccmc_jax import checks
from ccmc_jax import model


class Dataset(NamedTuple):
  """``n`` (prompt, next token) pairs, reduced to what the likelihood needs.

  Attributes:
    query: (n,) int32 query tokens ``x_L``.
    counts: (n, K) float32 key counts ``m(X)`` (the query excluded for cross-attention).
    y: (n,) int32 next tokens.
  """
  query: jax.Array
  counts: jax.Array
  y: jax.Array


def sample_scores(key, K, scale=1.0, zero_diag=False):
  """Ground-truth scores ``A* ~ N(0, scale^2)`` (K x K); ``W* = A*^T`` for ``E = I``.

  Args:
    key: PRNG key.
    K: vocabulary size.
    scale: standard deviation of the entries.
    zero_diag: set the diagonal to ``-inf`` (``P* = zero_diagonal(P)``).
  Returns:
    (K, K) float32 scores; ``P* = softmax(A*, axis=-1)``.
  Raises:
    ValueError: ``key`` not a PRNG key; ``K`` not an int >= 1 (>= 2 with ``zero_diag``); a
      concrete ``scale`` that is not a finite number >= 0 (a traced NaN scale gives NaN
      scores).
  References: paper Sec. 3 (learning from IID prompts; ``A* ~ N(0, 1)`` is our default).
  """
  checks.key('key', key)
  K = checks.size('K', K, 2 if zero_diag else 1)
  checks.number('scale', scale, 0)
  A = scale * jax.random.normal(key, (K, K), jnp.float32)
  if zero_diag:
    A = jnp.where(jnp.eye(K, dtype=bool), -jnp.inf, A)
  return A


def uniform_prompt(K, L) -> Callable:
  """Prompt sampler: ``L`` IID uniform tokens over ``[K]`` (paper Sec. 3 default).

  A prompt sampler maps uniforms ``u`` of shape (..., L + 1) in [0, 1) to prompts (..., L).
  It carries ``K`` and ``L`` as attributes, so :func:`sample_dataset` refuses a sampler over
  another vocabulary or length than its scores and ``L`` (:func:`ccmc_jax.checks.prompt_sampler`).
  Raises ValueError unless ``K`` and ``L`` are ints >= 1.
  """
  K, L = checks.size('K', K), checks.size('L', L)

  def sample(u):
    return jnp.minimum(jnp.floor(u[..., :L] * K), K - 1).astype(jnp.int32)
  sample.K, sample.L = K, L
  return sample


def two_group_prompt(K, L) -> Callable:
  """Prompt sampler whose cross-attention co-occurrence graphs are disconnected.

  The query is uniform over ``[K]``; the ``L - 1`` context tokens are uniform over one of two
  groups, ``{0..K/2-1}`` or ``{K/2..K-1}``, picked with probability 1/2 per prompt. Contexts
  never mix the groups, so for cross-attention every ``G_k`` has two components (Thm 3.4
  fails), while self-attention joins them through the query.
  Raises ValueError unless ``K`` and ``L`` are ints >= 2 (two groups; a context and a query).
  References: paper Fig. 3, Thm 3.4; ``docs/theory.md`` Sec. 5 (identifiability).
  """
  K, L = checks.size('K', K, 2), checks.size('L', L, 2)
  half = K // 2

  def sample(u):
    second = u[..., L:L + 1] < 0.5
    lo = jnp.where(second, half, 0)
    size = jnp.where(second, K - half, half)
    ctx = lo + jnp.minimum(jnp.floor(u[..., :L - 1] * size), size - 1).astype(jnp.int32)
    q = jnp.minimum(jnp.floor(u[..., L - 1:L] * K), K - 1).astype(jnp.int32)
    return jnp.concatenate([ctx, q], axis=-1).astype(jnp.int32)
  sample.K, sample.L = K, L
  return sample


PROMPTS = {'uniform': uniform_prompt, 'two_group': two_group_prompt}
BLOCK = 1024  # samples per fold_in block: data sets are prefixes of larger ones


def _uniforms(key, n, width):
  """(n, width) uniforms; block b of BLOCK rows comes from fold_in(key, b) (prefix-stable)."""
  blocks = -(-n // BLOCK)
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(blocks))
  # lax.map, not vmap: the same numbers, but threefry is compiled once for one block (vmapped
  # threefry compiles ~2x slower on CPU and runs no faster).
  u = jax.lax.map(lambda k: jax.random.uniform(k, (BLOCK, width)), keys)
  return u.reshape(blocks * BLOCK, width)[:n]


def sample_prompts(key, n, L, prompt_fn):
  """``n`` IID prompts of length ``L`` from ``prompt_fn``; returns (n, L) int32."""
  return prompt_fn(_uniforms(key, n, L + 1))


def categorical_from_uniform(u, log_probs):
  """Inverse-CDF draw from ``exp(log_probs)`` (..., K) with uniforms ``u`` (...)."""
  cdf = jnp.cumsum(jnp.exp(log_probs), axis=-1)
  cdf = cdf / cdf[..., -1:]
  K = log_probs.shape[-1]
  return jnp.minimum((cdf <= u[..., None]).sum(-1), K - 1).astype(jnp.int32)


def _next_tokens(u, log_P, X, counts):
  """Inverse-CDF next tokens from uniforms ``u`` (n,) given prompts and their counts."""
  return categorical_from_uniform(u, model.ccmc_log_probs(log_P[X[:, -1]], counts))


def sample_next_tokens(key, log_P, X, cross=False):
  """Next tokens ``y_t ~ pi^{X_t}`` for prompts ``X`` (n, L).

  Args:
    key: PRNG key.
    log_P: (K, K) log base chain (``-inf`` allowed, e.g. a zero diagonal) or scores ``A``.
    X: (n, L) int prompts.
    cross: cross-attention keys (query excluded).
  Returns:
    (n,) int32 next tokens.
  Raises:
    ValueError: as :func:`sample_dataset` (``log_P`` not (K, K), ``X`` not (n, L) ids).
  References: paper Lemma 2.2; Fig. 4 (single outputs of many IID prompts).
  """
  checks.key('key', key)
  check_score_matrix(log_P, 'log_P')
  checks.token_ids('X', X, checks.shape_of(log_P)[-1], min_length=1 + bool(cross), ndim=2)
  counts = model.token_counts(X, log_P.shape[-1], cross)
  return _next_tokens(_uniforms(key, X.shape[0], 1)[:, 0], log_P, X, counts)


def dataset_uniforms(key, n, L):
  """The randomness of :func:`sample_dataset`: uniforms for ``n`` prompts (n, L + 1) and
  answers (n,). They do not depend on ``K`` or ``A``, so one compiled generator serves every
  vocabulary size of a sweep."""
  x_key, y_key = jax.random.split(key)
  return _uniforms(x_key, n, L + 1), _uniforms(y_key, n, 1)[:, 0]


def check_score_matrix(A, name='A'):
  """Scores (or ``log P``) for sampling: (K, K) always; when concrete no NaN, no ``+inf``
  (``-inf`` is a forbidden transition) and not a row-stochastic ``P``. Returns K."""
  K = checks.square(name, A)
  checks.no_nan(name, A)
  model.check_scores(A, name)
  return K


def dataset_from_uniforms(A, u_x, u_y, prompt_fn, cross=False):
  """:func:`sample_dataset` from the uniforms of :func:`dataset_uniforms` (same numbers)."""
  K = check_score_matrix(A)
  n, width = checks.shape_of(u_x)
  checks.prompt_sampler(prompt_fn, K, width - 1)
  X = checks.prompts_drawn(prompt_fn(u_x), n, width - 1, K)
  counts = model.token_counts(X, A.shape[-1], cross)
  return Dataset(X[:, -1], counts, _next_tokens(u_y, A, X, counts))


def sample_dataset(key, A, n, L, prompt_fn, cross=False):
  """``n`` IID pairs ``(X, y)`` with ``y ~ pi^X(A)``, reduced to a :class:`Dataset`.

  Args:
    key: PRNG key.
    A: (K, K) ground-truth scores ``A = W^T`` (or ``log P``); not ``P`` itself (refused when
      called eagerly, :func:`ccmc_jax.model.check_scores`).
    n: number of samples (static).
    L: prompt length (static).
    prompt_fn: prompt sampler, e.g. ``uniform_prompt(K, L)``.
    cross: cross-attention (query not among the keys).
  Returns:
    Dataset with ``n`` rows.
  Raises:
    ValueError: ``key`` not a PRNG key (``jax.random.PRNGKey(seed)``); ``A`` not (K, K); ``n``
      or ``L`` not an int >= 1 (``L >= 2`` with ``cross``); ``prompt_fn`` over another ``K``
      or ``L`` (its attributes) or returning other than (n, L) integer ids; called eagerly,
      NaN or ``+inf`` scores, a row-stochastic ``A``, prompt ids outside ``[0, K)``. Under
      ``jit`` the value checks are skipped: NaN scores give answers of token ``K - 1`` (check
      the scores eagerly).
  References: paper Sec. 3 (learning from IID prompts).
  """
  checks.key('key', key)
  check_score_matrix(A)
  n, L = checks.size('n', n), checks.size('L', L, 1 + bool(cross))
  checks.prompt_sampler(prompt_fn, checks.shape_of(A)[-1], L)
  return dataset_from_uniforms(A, *dataset_uniforms(key, n, L), prompt_fn, cross)


def sample_sparse_dataset(key, A, n, L, cross=False, prompt_fn=None):
  """``n`` IID pairs ``(X, y)`` with ``y ~ pi^X(A)`` as token ids: no count vectors, O(nL) memory.

  The answer is drawn by picking a key position ``l`` with probability proportional to
  ``exp(A[x_L, x_l])`` and answering ``x_l``: a token ``j`` is then drawn with probability
  ``m_j(X) exp(A[x_L, j]) / sum_i m_i(X) exp(A[x_L, i]) = pi^X_j``, exactly (Lemma 2.2; this is
  the attention forward pass itself, the softmax over positions). The prompts are the same
  numbers as :func:`sample_dataset` draws with the same key (same uniforms, prefix-stable in
  ``n``); the answers have the same law but are different draws. Generated in blocks of
  ``BLOCK`` samples (``lax.map``), so the working set is the output: ``n = 1e7``, ``L = 10`` needs
  about 0.5 GB whatever ``K``.

  Args:
    key: PRNG key.
    A: (K, K) ground-truth scores (or ``log P``; ``-inf`` allowed: a prompt whose key scores
      are all ``-inf`` answers a uniformly chosen key position, i.e. ``pi`` proportional to
      ``m``, as :func:`ccmc_jax.model.ccmc_log_probs` does).
    n: number of samples (static).
    L: prompt length (static); ``cross`` needs ``L >= 2``.
    cross: cross-attention (the query, the last position, is not a key).
    prompt_fn: prompt sampler (default ``uniform_prompt(K, L)``).
  Returns:
    ``(prompts, answers)``: (n, L) int32 token ids (the query is the last column) and (n,) int32.
  Raises:
    ValueError: as :func:`sample_dataset`.
  References: paper Definition 2.1 / Lemma 2.2; Sec. 3 (learning from IID prompts).
  """
  checks.key('key', key)
  K = check_score_matrix(A)
  n, L = checks.size('n', n), checks.size('L', L, 1 + bool(cross))
  A = jnp.asarray(A)
  prompt_fn = uniform_prompt(K, L) if prompt_fn is None else prompt_fn
  checks.prompt_sampler(prompt_fn, K, L)
  checks.prompts_drawn(jax.eval_shape(prompt_fn, jax.ShapeDtypeStruct((BLOCK, L + 1),
                                                                      jnp.float32)),
                       BLOCK, L, K)
  x_key, y_key = jax.random.split(key)

  def block(b):
    # The uniforms of _uniforms(x_key, n, L + 1) and _uniforms(y_key, n, 1), block b.
    X = prompt_fn(jax.random.uniform(jax.random.fold_in(x_key, b), (BLOCK, L + 1)))
    u = jax.random.uniform(jax.random.fold_in(y_key, b), (BLOCK, 1))[:, 0]
    keys = X[:, :-1] if cross else X
    logits = A[X[:, -1:], keys]
    lost = jnp.all(jnp.isneginf(logits), axis=-1, keepdims=True)
    log_probs = jax.nn.log_softmax(jnp.where(lost, 0.0, logits), axis=-1)
    position = categorical_from_uniform(u, log_probs)
    return X, jnp.take_along_axis(keys, position[:, None], axis=1)[:, 0]

  X, y = jax.lax.map(block, jnp.arange(-(-n // BLOCK)))
  return X.reshape(-1, L)[:n], y.reshape(-1)[:n]
