"""Positional encoding: the position-weighted CCMC, its sampling and its joint MLE.

Model (paper Definition 2.4 / Lemma 2.5; ``docs/theory.md`` Sec. 6). With keys
``e_{x_i} + p_i`` and position vectors that carry no token identity (``C p_i = 0``),

    pi^X_k ∝ P[x_L, k] * sum_{i: x_i = k} w_i,

each occurrence of token ``k`` weighted by a positive factor of its position. Parametrisation
(our choice; the paper leaves it open): a learnable positional bias ``b ∈ R^L`` with
``w_i = exp(b_i)``, and scores ``A`` with ``P = softmax(A, -1)``. The next-token law in log space is

    log pi^X_k = A[x_L, k] + logsumexp_{i: x_i = k} b_i - logsumexp_i (A[x_L, x_i] + b_i),

i.e. attention picks position ``i`` with logit ``z_i = A[x_L, x_i] + b_i`` and emits its token.
For cross-attention the query position ``L`` is not a key, so only ``b_1..b_{L-1}`` enter.

Gauge / identifiability (ours; ``docs/theory.md`` Sec. 6): ``pi`` is unchanged by
``A[q, :] -> A[q, :] + c_q`` (each query row) and by ``b -> b + c`` (``w -> e^c w``: the global
scale of ``w``). Nothing else is free under uniform prompts with ``L >= 3``. With ``L = 2``
(self-attention) the weight of the query position is confounded with the diagonal of ``A``
(shift every off-diagonal score and ``b_1`` together), so experiments require ``L >= 3``. The
errors below compare only gauge-invariant quantities: ``P = softmax(A)`` per row and the
normalised weights ``w / sum(w) = softmax(b)``.

The attention model realises the learnable bias exactly (:func:`embed_position_bias`, ``d = K+1``);
generic positional embeddings give query-dependent weights ``w_i(x_L)`` and a shifted base chain
(:func:`attention_to_positional_scores`, in log space; :func:`attention_to_positional_ccmc`, in
probability form), the paper's per-query variant ``b ∈ R^{K x L}``.

Everything here is pure and jit/vmap friendly; ``n`` is a traced scalar in the fit, so one
compilation serves a whole sweep of ``n`` (the data are padded to the largest ``n`` and masked).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ccmc_jax import fit
from ccmc_jax import model
from ccmc_jax import sampling

BIAS_KINDS = ('random', 'recency')


class PositionalDataset(NamedTuple):
  """``n`` IID (prompt, next token) pairs; positions matter, so the prompts are kept whole.

  Attributes:
    X: (n, L) int32 prompts; ``X[:, -1]`` is the query.
    y: (n,) int32 next tokens.
  """
  X: jax.Array
  y: jax.Array


class PositionalFit(NamedTuple):
  """Joint MLE: ``A_hat`` (K, K) row-centred scores, ``b_hat`` (L_keys,) centred log-weights,
  Newton ``iters`` used, and ``invalid`` samples (answer absent from the keys; must be 0)."""
  A_hat: jax.Array
  b_hat: jax.Array
  iters: jax.Array
  invalid: jax.Array


def _keys(X, cross):
  """Key tokens of prompts (..., L): all of them, or all but the query for cross-attention."""
  return X[..., :-1] if cross else X


def sample_position_bias(key, L, scale=1.0, kind='random'):
  """Ground-truth positional bias ``b*`` (L,), ``w*_i = exp(b*_i)``, centred (the gauge).

  Args:
    key: PRNG key (unused by ``recency``).
    L: prompt length.
    scale: ``random``: ``b_i ~ N(0, scale^2)``; ``recency``: a linear ramp from ``-scale`` at
      position 1 to ``+scale`` at position L (later positions weigh more).
    kind: one of ``BIAS_KINDS``.
  Returns:
    (L,) float32 with zero mean.
  References: paper Definition 2.4 (position weights); ``docs/theory.md`` Sec. 6 (our choice).
  """
  if kind == 'random':
    b = scale * jax.random.normal(key, (L,), jnp.float32)
  elif kind == 'recency':
    b = scale * jnp.linspace(-1.0, 1.0, L, dtype=jnp.float32)
  else:
    raise ValueError(f'kind={kind!r}: allowed values are {", ".join(BIAS_KINDS)}')
  return b - b.mean()


def positional_log_probs(A, b, X, cross=False):
  """``log pi^X`` of the position-weighted CCMC, computed in log space.

  ``log pi_k = A[x_L, k] + logsumexp_{i: x_i = k} b_i - (normaliser)``; ``-inf`` for tokens
  absent from the keys. Equals ``log positional_ccmc_next_token_probs(softmax(A), X, exp(b))``
  without ever forming ``exp(b)`` (no overflow for large biases).

  Args:
    A: (K, K) scores (or ``log P``).
    b: (L,) log position weights (``(L-1,)`` also accepted with ``cross``).
    X: int (..., L) prompts.
    cross: the query position is not a key.
  Returns:
    (..., K) log next-token probabilities.
  References: paper Definition 2.4 / Lemma 2.5.
  """
  A, b, X = jnp.asarray(A), jnp.asarray(b), jnp.asarray(X)
  keys = _keys(X, cross)
  b = b[..., :keys.shape[-1]]
  hit = keys[..., :, None] == jnp.arange(A.shape[-1])  # (..., L_keys, K)
  log_w = jax.nn.logsumexp(jnp.where(hit, b[..., :, None], -jnp.inf), axis=-2)
  return jax.nn.log_softmax(A[X[..., -1]] + log_w, axis=-1)


def sample_positional_dataset(key, A, b, n, L, prompt_fn, cross=False):
  """``n`` IID pairs ``(X, y)`` with ``y ~ pi^X(A, b)`` of the position-weighted CCMC.

  Prefix-stable like :func:`ccmc_jax.sampling.sample_dataset`: the first ``n`` samples do not
  depend on how many are drawn.

  Args:
    key: PRNG key.
    A: (K, K) ground-truth scores.
    b: (L,) ground-truth log position weights, ``w*_i = exp(b_i)``.
    n: number of samples (static).
    L: prompt length (static).
    prompt_fn: prompt sampler, e.g. ``sampling.uniform_prompt(K, L)``.
    cross: cross-attention (query not among the keys).
  Returns:
    PositionalDataset with ``n`` rows.
  References: paper Lemma 2.5; Sec. 3 (learning from IID prompts).
  """
  model.check_scores(A, 'A')
  x_key, y_key = jax.random.split(key)
  X = sampling.sample_prompts(x_key, n, L, prompt_fn)
  u = sampling._uniforms(y_key, n, 1)[:, 0]  # pylint: disable=protected-access  (prefix-stable)
  y = sampling.categorical_from_uniform(u, positional_log_probs(A, b, X, cross))
  return PositionalDataset(X, y)


def nll(A, b, data: PositionalDataset, n=None, cross=False, ridge=0.0):
  """Mean negative log-likelihood of the first ``n`` samples (autodiff reference).

  ``l(A, b) = (1/n) sum_t [ logsumexp_i z_ti - logsumexp_{i: x_ti = y_t} z_ti ]
  + (ridge/2)(||A||^2 + ||b||^2)`` with ``z_ti = A[q_t, x_ti] + b_i``. Not convex in ``(A, b)``
  jointly (a difference of two log-sum-exps), though convex in ``A`` for fixed ``b``.
  References: paper Sec. 3 (MLE), Lemma 2.5.
  """
  N = data.y.shape[0]
  n = N if n is None else n
  wt = (jnp.arange(N) < n) / jnp.asarray(n, jnp.float32)
  keys = _keys(data.X, cross)
  z = A[data.X[:, -1:], keys] + b[:keys.shape[-1]]
  # A finite mask, not -inf: keeps second derivatives NaN-free for autodiff.
  z_y = jnp.where(keys == data.y[:, None], z, -1e30)
  ll = jax.nn.logsumexp(z_y, axis=-1) - jax.nn.logsumexp(z, axis=-1)
  return -(wt @ jnp.where(wt > 0, ll, 0.0)) + 0.5 * ridge * (jnp.sum(A * A) + jnp.sum(b * b))


def _chunk_stats(theta, keys, query, y, wt, K):
  """Loss, gradient and (observed) Hessian at ``theta = (vec A, b)`` summed over one chunk.

  In position space, with ``s = softmax(z)`` (attention) and ``r`` = the posterior over the
  positions holding the answer (``s`` restricted to ``x_i = y``, renormalised), the per-sample
  gradient is ``s - r`` and the Hessian ``(diag s - s s^T) - (diag r - r r^T)``. Pulled back
  through ``z_i = A[q, x_i] + b_i`` this gives, per sample with weight ``wt``:
    A-row q block: ``diag pi - pi pi^T`` (the ``r`` terms cancel: ``sum_{i: x_i=k} r_i = [k=y]``),
    A[q, k]-b_j:   ``[x_j = k](s_j - r_j) - pi_k s_j + [k = y] r_j``,
    b-b:           ``diag(s - r) - s s^T + r r^T``.
  """
  n, Lk = keys.shape
  A, b = theta[:K * K].reshape(K, K), theta[K * K:]
  # Only elementwise ops and 2-D matmuls contracting over the samples: batched tiny matmuls
  # and 3-operand einsums are several times slower on CPU.
  hot = (keys[:, :, None] == jnp.arange(K)).astype(jnp.float32)  # (n, Lk, K)
  Qw = jax.nn.one_hot(query, K, dtype=jnp.float32) * wt[:, None]  # weighted query indicator
  ey = jax.nn.one_hot(y, K, dtype=jnp.float32)
  z = A[query[:, None], keys] + b[None, :]
  match = keys == y[:, None]
  lse = jax.nn.logsumexp(z, axis=-1)
  s = jnp.exp(z - lse[:, None])
  # Guard against log 0: an answer absent from the keys has zero weight (wt = 0), but must not
  # produce NaNs that 0 * NaN would spread.
  has = match.any(-1)
  lse_y = jnp.where(has, jax.nn.logsumexp(jnp.where(match, z, -jnp.inf), axis=-1), 0.0)
  r = jnp.where(match, jnp.exp(z - lse_y[:, None]), 0.0)
  pi = (s[:, :, None] * hot).sum(1)  # pi_k = sum_{i: x_i = k} s_i
  loss = wt @ jnp.where(wt > 0, lse - lse_y, 0.0)
  g_A = Qw.T @ (pi - ey)
  g_b = wt @ (s - r)
  grad = jnp.concatenate([g_A.reshape(-1), g_b])
  Qpi = (Qw[:, :, None] * pi[:, None, :]).reshape(n, K * K)  # (q, k) -> wt [q_t = q] pi_k
  Qey = (Qw[:, :, None] * ey[:, None, :]).reshape(n, K * K)
  blk = (Qw.T @ pi)[:, :, None] * jnp.eye(K) - (Qpi.T @ pi).reshape(K, K, K)
  H_AA = (jnp.eye(K)[:, None, :, None] * blk[:, :, None, :]).reshape(K * K, K * K)
  D = ((s - r)[:, :, None] * hot).reshape(n, Lk * K)
  H_Ab = ((Qw.T @ D).reshape(K, Lk, K).transpose(0, 2, 1).reshape(K * K, Lk)
          - Qpi.T @ s + Qey.T @ r)
  sw, rw = s * wt[:, None], r * wt[:, None]
  H_bb = jnp.diag(g_b) - sw.T @ s + rw.T @ r
  hess = jnp.block([[H_AA, H_Ab], [H_Ab.T, H_bb]])
  return loss, grad, hess


def _stats(theta, keys, query, y, wt, K, ridge, n_chunks, chunk):
  """One pass over the first ``n_chunks`` chunks of the data (``n_chunks`` may be traced, so
  the cost grows with ``n``, not with the padded size): loss, gradient and Hessian + ridge."""
  P = theta.shape[0]

  def body(c, acc):
    part = [jax.lax.dynamic_slice_in_dim(x, c * chunk, chunk) for x in (keys, query, y, wt)]
    return jax.tree.map(jnp.add, acc, _chunk_stats(theta, *part, K))

  zero = (jnp.float32(0.0), jnp.zeros(P, jnp.float32), jnp.zeros((P, P), jnp.float32))
  loss, grad, hess = jax.lax.fori_loop(0, n_chunks, body, zero)
  return (loss + 0.5 * ridge * theta @ theta, grad + ridge * theta,
          hess + ridge * jnp.eye(P, dtype=jnp.float32))


def gauge_projector(K, Lk):
  """Orthogonal projector onto the gauge directions: one per query row of A, one for b."""
  return jax.scipy.linalg.block_diag(jnp.kron(jnp.eye(K), jnp.ones((K, K)) / K),
                                     jnp.ones((Lk, Lk)) / Lk)


def fit_positional(data: PositionalDataset, K, n=None, cross=False, ridge=1e-6, tol=1e-4,
                   max_iter=50, init=None, chunk=2048):
  """Joint maximum-likelihood ``(A, b)`` by a full Newton method on the ``K^2 + L`` parameters.

  The problem is not separable per query row (``b`` is shared) and not convex, so each step
  uses the observed Hessian made positive definite: the gauge directions (null space) are
  lifted by adding their projector, and each eigenvalue is replaced by its absolute value
  (saddle-free Newton; identical to plain Newton wherever the Hessian is positive definite, as it
  is near the optimum for large n). Step acceptance is Armijo backtracking spread over
  iterations, as in :func:`ccmc_jax.fit.fit_scores`, with one pass over the data per iteration.
  Starts at ``A = 0, b = 0``; every iterate stays in the gauge-fixed subspace (row-centred A,
  centred b) because the gradient is orthogonal to the gauge directions.

  Args:
    data: PositionalDataset (N rows; the first ``n`` are used).
    K: vocabulary size (static).
    n: samples to use (traced scalar allowed); None means all.
    cross: cross-attention (static): the query position is not a key; ``b_hat`` has L-1 entries.
    ridge: ``(ridge/2)(||A||^2 + ||b||^2)``, keeps the estimate finite when the MLE does not
      exist (a (query, token) pair never answered).
    tol: stop when ``n g^T H^{-1} g`` (about twice the log-likelihood gap, in nats) < ``tol``.
    max_iter: Newton iterations at most.
  Returns:
    PositionalFit; ``softmax(A_hat)`` estimates ``P``, ``softmax(b_hat)`` estimates
    ``w / sum(w)``.
  References: paper Lemma 2.5 (positional CCMC), Sec. 3 (MLE); ``docs/theory.md`` Sec. 6.
  """
  N = data.y.shape[0]
  n = N if n is None else n
  keys, query = _keys(data.X, cross), data.X[:, -1]
  Lk = keys.shape[-1]
  valid = (jnp.arange(N) < n) & (keys == data.y[:, None]).any(-1)
  invalid = ((jnp.arange(N) < n) & ~valid).sum()
  wt = valid / jnp.asarray(n, jnp.float32)
  n_eff = jnp.asarray(n, jnp.float32)
  G = gauge_projector(K, Lk)
  # Pad to whole chunks (static shapes); padding has weight 0 and is never read when n <= N.
  chunk = min(chunk, N)
  pad = -N % chunk
  keys, query, y, wt = (jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
                        for x in (keys, query, data.y, wt))
  n_chunks = (jnp.minimum(jnp.asarray(n, jnp.int32), N) + chunk - 1) // chunk
  stats = lambda th: _stats(th, keys, query, y, wt, K, ridge, n_chunks, chunk)

  def direction(g, H):
    lam, V = jnp.linalg.eigh(H + G)
    lam = jnp.maximum(jnp.abs(lam), 1e-7 * jnp.abs(lam).max())
    gv = V.T @ g
    return -V @ (gv / lam), jnp.sum(gv * gv / lam)

  if init is None:
    theta0 = jnp.zeros(K * K + Lk, jnp.float32)
  else:
    A0, b0 = init
    A0 = A0 - A0.mean(-1, keepdims=True)
    b0 = b0[:Lk] - b0[:Lk].mean()
    theta0 = jnp.concatenate([A0.reshape(-1), b0]).astype(jnp.float32)
  theta, it = fit.damped_newton(stats, direction, theta0, n_eff, tol, max_iter)
  A = theta[:K * K].reshape(K, K)
  b = theta[K * K:]
  return PositionalFit(A - A.mean(-1, keepdims=True), b - b.mean(), it, invalid)


def normalized_weights(b):
  """``w / sum(w)`` with ``w = exp(b)``: the gauge-invariant position weights (= softmax(b))."""
  return jax.nn.softmax(b, axis=-1)


def w_error(b_hat, b_true):
  """``||w_hat/sum(w_hat) - w*/sum(w*)||_2^2`` over the key positions.

  Gauge: invariant exactly to ``b -> b + c`` (``w -> e^c w``), the only freedom of ``b``; not
  to a rescaling of ``b`` (that changes the model). ``b_true`` may be longer than ``b_hat``
  (cross-attention: the query position carries no key), then its first ``len(b_hat)`` entries
  are compared.
  References: paper Lemma 2.5; ``docs/theory.md`` Sec. 6 (gauge ``b -> b + c``).
  """
  b_true = b_true[..., :b_hat.shape[-1]]
  return jnp.sum((normalized_weights(b_hat) - normalized_weights(b_true)) ** 2, axis=-1)


def attention_to_positional_scores(W, E=None, pos=None):
  """The positional CCMC that attention with positional embeddings computes, in log space.

  Scores ``(e_{x_i} + p_i)^T W (e_q + p_L)`` split into a token part and a position part:
  ``A_eff[q, k] = e_k^T W (e_q + p_L)`` and ``b_eff[q, i] = p_i^T W (e_q + p_L)``, so
  ``log pi^X = positional_log_probs(A_eff, b_eff[x_L], X)``: ``pi^X_k ∝ P_eff[q, k]
  sum_{i: x_i = k} w_i(q)`` with ``P_eff = softmax(A_eff)`` and ``w_i(q) = exp(b_eff[q, i])``,
  position weights that may depend on the query (the paper's per-query variant); they do not
  when ``p_i^T W e_q`` is the same for every ``q``. Nothing is exponentiated, so the result is
  finite for any finite weights (``P_eff`` underflows and ``w`` overflows in float32 once score
  gaps exceed ~87; their logs here do not).

  Args:
    W: (d, d) weights.
    E: (K, d) embeddings, None for ``I_K``.
    pos: (L, d) positional embeddings with ``C p_i = 0`` (None: no positions).
  Returns:
    ``(A_eff (K, K), log_w (K, L))``: the scores (``log P_eff`` up to a per-row constant) and
    the log position weights per query.
  References: paper Lemma 2.5.
  """
  W = jnp.asarray(W)
  E = jnp.eye(W.shape[0], dtype=W.dtype) if E is None else jnp.asarray(E, W.dtype)
  pos = jnp.zeros((1, W.shape[0]), W.dtype) if pos is None else jnp.asarray(pos, W.dtype)
  queries = E + pos[-1]  # (K, d): e_q + p_L
  A_eff = jnp.einsum('kd,de,qe->qk', E, W, queries)
  log_w = jnp.einsum('id,de,qe->qi', pos, W, queries)
  return A_eff, log_w


def attention_to_positional_ccmc(W, E=None, pos=None):
  """The positional CCMC of :func:`attention_to_positional_scores` in probability form.

  Returns:
    ``(P_eff (K, K), log_w (K, L))`` with ``P_eff = softmax(A_eff)``; pass the weights of the
    query, ``exp(log_w)[X[..., -1]]`` (or ``softmax(log_w)[X[..., -1]]``, the same weights up to
    the free scale of ``w`` and never overflowing), as ``w`` to
    :func:`ccmc_jax.model.positional_ccmc_next_token_probs`. Exact in float32 only while
    ``P_eff`` does not underflow on the key tokens (score gaps below ~87); the log form of
    :func:`attention_to_positional_scores` has no such limit.
  References: paper Lemma 2.5.
  """
  A_eff, log_w = attention_to_positional_scores(W, E, pos)
  return jax.nn.softmax(A_eff, axis=-1), log_w


def embed_position_bias(A, b):
  """Attention weights realising the learnable-bias model exactly, with ``d = K + 1``.

  ``E = [I_K, 0]``, ``p_i = b_i u`` (``u`` the extra axis) and ``W = [[A^T, 0], [1^T, 0]]`` give
  scores ``(e_{x_i} + b_i u)^T W (e_q + b_L u) = A[q, x_i] + b_i``; ``C = [I_K, 0]`` satisfies
  ``C E^T = I`` and ``C p_i = 0``.

  Args:
    A: (K, K) scores; b: (L,) log position weights.
  Returns:
    ``(W (d, d), E (K, d), pos (L, d))`` for :func:`ccmc_jax.model.attention_next_token_probs`.
  References: paper Lemma 2.5; ``docs/theory.md`` Sec. 6 (the learnable bias, our choice).
  """
  A, b = jnp.asarray(A), jnp.asarray(b)
  K = A.shape[0]
  W = jnp.zeros((K + 1, K + 1), A.dtype).at[:K, :K].set(A.T).at[K, :K].set(1.0)
  E = jnp.eye(K, K + 1, dtype=A.dtype)
  pos = jnp.zeros((b.shape[0], K + 1), A.dtype).at[:, K].set(b)
  return W, E, pos


__all__ = [
    'BIAS_KINDS', 'PositionalDataset', 'PositionalFit', 'attention_to_positional_ccmc',
    'attention_to_positional_scores', 'embed_position_bias', 'fit_positional', 'gauge_projector',
    'nll', 'normalized_weights', 'positional_log_probs', 'sample_position_bias', 'sample_positional_dataset', 'w_error',
]
