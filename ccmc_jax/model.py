"""The model: 1-layer self-attention and the context-conditioned Markov chain (CCMC).

Conventions (paper Sec. 2; ``docs/theory.md`` Sec. 1):
  * Vocabulary ``[K] = {0, ..., K-1}`` (0-indexed; the paper writes 1..K).
  * Embeddings ``E`` (K x d), row ``e_k``; ``E=None`` means ``E = I_K``.
  * Prompt ``X = (x_1, ..., x_L)``; the last token ``x_L`` is the query.
  * Scores ``A[i, j] = e_j^T W e_i`` (row = query/current token, column = next token),
    so ``A = E W^T E^T`` and the base chain is ``P = softmax(A, axis=-1)``.

One convention across the library: the functions of this module that model the attention layer
take the weights ``W`` (:func:`transition_matrix`, :func:`attention_next_token_probs`) or the
base chain ``P`` (:func:`ccmc_next_token_probs`); ``sampling``, ``fit``, ``theory`` and
``trajectory`` take scores ``A = W^T`` (or ``log P``, equivalent scores). :func:`scores` turns
``W`` into ``A``. A transposed ``W`` cannot be detected, but a ``P`` passed where scores are
expected (or scores where ``P`` is expected) is refused when called eagerly:
:func:`check_scores`, :func:`check_base_chain`.

Every function is pure, shape-polymorphic over leading batch axes and jit/vmap friendly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import checks


def scores(W, E=None):
  """Score matrix ``A[i, j] = e_j^T W e_i`` (query row i, next-token column j).

  Args:
    W: (d, d) attention weights.
    E: (K, d) token embeddings; None means ``E = I_K`` (then ``A = W^T``).
  Returns:
    (K, K) scores.
  Raises:
    ValueError: ``W`` not square, ``E`` not (K, d); called eagerly, NaN or inf in ``W``/``E``
      (under ``jit`` NaN in, NaN out).
  References: paper Fig. 2 (``softmax(E W e_i)`` forms row i of P).
  """
  _check_weights(W, E)
  W = jnp.asarray(W)
  if E is None:
    return W.T
  E = jnp.asarray(E)
  return E @ W.T @ E.T


def _check_weights(W, E=None, pos=None, L=None):
  """W (d, d) finite; E (K, d) finite; pos (L, d) finite (values when concrete)."""
  d = checks.square('W', W, 'attention weights')
  checks.no_nan('W', W, neg_inf=False)
  K = d
  if E is not None:
    shape = checks.shape_of(E)
    if len(shape) != 2 or shape[1] != d or shape[0] < 1:
      raise ValueError(f'E must be (K, d) = (K, {d}) embeddings (d from W), got shape {shape}')
    checks.no_nan('E', E, neg_inf=False)
    K = shape[0]
  if pos is not None:
    shape = checks.shape_of(pos)
    if shape != (L, d):
      raise ValueError(f'pos must be (L, d) = ({L}, {d}) positional embeddings, got shape '
                       f'{shape}')
    checks.no_nan('pos', pos, neg_inf=False)
  return K


def transition_matrix(W, E=None):
  """Base chain ``P[i, j] = softmax_j(e_j^T W e_i)``; rows sum to one.

  Args:
    W: (d, d) attention weights.
    E: (K, d) embeddings, None for ``I_K``.
  Returns:
    (K, K) row-stochastic matrix, strictly positive for finite W.
  Raises:
    ValueError: as :func:`scores` (not square, E not (K, d), NaN/inf when called eagerly).
  References: paper Fig. 2 / Definition 2.1 (base Markov chain of the CCMC).
  """
  return jax.nn.softmax(scores(W, E), axis=-1)


def token_counts(X, K, cross=False):
  """Token counts ``m(X)`` of the keys of each prompt.

  Args:
    X: int array (..., L).
    K: vocabulary size.
    cross: if True the query (last position) is not a key and is not counted.
  Returns:
    float32 array (..., K) of counts (sum L, or L-1 when ``cross``).
  Raises:
    ValueError: ``K`` not an int >= 1, ``X`` not integer ids of length >= 1 (2 for
      ``cross``); called eagerly, ids outside ``[0, K)`` (under ``jit`` such an id is dropped:
      the counts then sum to less than L).
  References: paper Definition 2.1 (``m(X)``).
  """
  K = checks.size('K', K)
  checks.token_ids('X', X, K, min_length=1 + bool(cross))
  keys = jnp.asarray(X[..., :-1] if cross else X)
  flat = keys.reshape(-1, keys.shape[-1])
  # Scatter-add, not one_hot(...).sum(): memory O(K) per prompt instead of O(L K).
  rows = jnp.arange(flat.shape[0])[:, None]
  counts = jnp.zeros((flat.shape[0], K), jnp.float32).at[rows, flat].add(1.0)
  return counts.reshape(keys.shape[:-1] + (K,))


def ccmc_log_probs(log_P_rows, counts):
  """``log pi^X`` from the query rows of ``log P`` and the counts, safely in log space.

  ``pi_j = m_j P[q, j] / sum_l m_l P[q, l]``; absent tokens (``m_j = 0``) get ``-inf``.

  Args:
    log_P_rows: (..., K) log-probabilities (or unnormalised scores) of the query row.
    counts: (..., K) non-negative counts (or frequencies, or positive weights).
  Returns:
    (..., K) log next-token probabilities.
  References: paper Lemma 2.2.
  """
  present = counts > 0
  log_m = jnp.log(jnp.where(present, counts, 1.0))
  logits = jnp.where(present, log_P_rows + log_m, -jnp.inf)
  # A float32 P can underflow to 0 on every key token (score gaps above ~100): the row then
  # carries no information and pi would be 0/0. Fall back to pi proportional to m (never NaN);
  # the exact law needs the scores: attention_next_token_probs, or log_softmax(A) rows here.
  lost = jnp.all(jnp.isneginf(logits), axis=-1, keepdims=True)
  logits = jnp.where(lost & present, log_m, logits)
  return jax.nn.log_softmax(logits, axis=-1)


def ccmc_next_token_probs(P, X, cross=False):
  """CCMC next-token distribution ``pi^X_j = m_j(X) P[x_L, j] / sum_l m_l(X) P[x_L, l]``.

  Args:
    P: (K, K) row-stochastic base chain.
    X: int array (..., L) of prompts; ``X[..., -1]`` is the query.
    cross: cross-attention (the query is not counted among the keys; needs L >= 2).
  Returns:
    (..., K) probabilities, zero on tokens absent from the keys.
  Raises:
    ValueError: ``P`` not (K, K), ``X`` not integer ids of length >= 1 (2 for ``cross``);
      called eagerly, a ``P`` that is not row-stochastic or ids outside ``[0, K)`` (under
      ``jit`` an id >= K reads a clamped row of ``P``: check eagerly first).
  References: paper Definition 2.1 / Lemma 2.2.
  """
  _check_chain_and_prompt(P, X, cross)
  P = jnp.asarray(P)
  X = jnp.asarray(X)
  counts = token_counts(X, P.shape[-1], cross)
  log_P = jnp.log(P)
  return jnp.exp(ccmc_log_probs(log_P[X[..., -1]], counts))


def attention_next_token_probs(W, X, E=None, cross=False, pos=None):
  """The literal 1-layer attention forward pass, position by position.

  Keys ``k_i = e_{x_i} (+ p_i)``, query ``q = e_{x_L} (+ p_L)``, scores ``k_i^T W q``,
  ``s = softmax`` over positions, output ``o = C X^T s`` with ``C E^T = I_K`` and
  ``C p_i = 0``, i.e. ``o_k = sum_{i: x_i = k} s_i``.

  Args:
    W: (d, d) weights.
    X: int array (..., L).
    E: (K, d) embeddings, None for ``I_K`` (then d = K).
    cross: exclude the query (last) position from the keys.
    pos: optional (L, d) positional embeddings added to keys and query.
  Returns:
    (..., K) next-token probabilities.
  Raises:
    ValueError: ``W`` not (d, d), ``E`` not (K, d), ``pos`` not (L, d), ``X`` not integer ids
      of length >= 1 (2 for ``cross``); called eagerly, NaN/inf weights or ids outside
      ``[0, K)`` (under ``jit``: NaN in, NaN out; an id >= K is not counted).
  References: paper Sec. 2 (self-attention model), Fig. 2; Lemma 2.5 with ``pos``.
  """
  K = _check_weights(W, E, pos, checks.shape_of(X)[-1] if checks.shape_of(X) else None)
  checks.token_ids('X', X, K, min_length=1 + bool(cross))
  W = jnp.asarray(W)
  X = jnp.asarray(X)
  E = jnp.eye(W.shape[0], dtype=W.dtype) if E is None else jnp.asarray(E, W.dtype)
  K = E.shape[0]
  emb = E[X]  # (..., L, d)
  if pos is not None:
    emb = emb + jnp.asarray(pos, W.dtype)
  query = emb[..., -1, :]
  keys_emb, keys_tok = (emb[..., :-1, :], X[..., :-1]) if cross else (emb, X)
  s = jax.nn.softmax(jnp.einsum('...id,de,...e->...i', keys_emb, W, query), axis=-1)
  return jnp.einsum('...i,...ik->...k', s, jax.nn.one_hot(keys_tok, K, dtype=s.dtype))


def positional_ccmc_next_token_probs(P, X, w, cross=False):
  """Position-weighted CCMC: ``pi^X_j ∝ P[x_L, j] * sum_{i: x_i = j} w_i``.

  Args:
    P: (K, K) base chain.
    X: int array (..., L).
    w: positive position weights, (L,) (or (L-1,) for cross) or broadcastable (..., L).
    cross: exclude the query position from the keys.
  Returns:
    (..., K) probabilities.
  Raises:
    ValueError: as :func:`ccmc_next_token_probs`; ``w`` not broadcastable to the keys; called
      eagerly, negative or NaN weights.
  References: paper Definition 2.4 / Lemma 2.5 (positional encoding).
  """
  _check_chain_and_prompt(P, X, cross)
  _check_position_weights(w, checks.shape_of(X), cross)
  P = jnp.asarray(P)
  X = jnp.asarray(X)
  keys = X[..., :-1] if cross else X
  w = jnp.asarray(w, jnp.float32)
  if cross and w.shape[-1] == X.shape[-1]:
    w = w[..., :-1]  # the query position carries no key
  w = jnp.broadcast_to(w, keys.shape)
  weights = jnp.einsum('...i,...ik->...k', w, jax.nn.one_hot(keys, P.shape[-1]))
  return jnp.exp(ccmc_log_probs(jnp.log(P)[X[..., -1]], weights))


def _check_chain_and_prompt(P, X, cross):
  """The base chain ``P`` (K, K) and a prompt ``X`` (..., L) of ids over its K tokens (L >= 2
  with ``cross``); when concrete, ``P`` row-stochastic and ids in ``[0, K)``."""
  checks.square('P', P, 'transition probabilities')
  checks.token_ids('X', X, checks.shape_of(P)[-1], min_length=1 + bool(cross))
  check_base_chain(P)


def _check_position_weights(w, x_shape, cross):
  keys = x_shape[:-1] + (x_shape[-1] - bool(cross),)
  shape = checks.shape_of(w)
  if cross and shape and shape[-1] == x_shape[-1]:
    shape = shape[:-1] + (shape[-1] - 1,)
  try:
    np.broadcast_shapes(shape, keys)
    ok = len(shape) >= 1 and shape[-1] == keys[-1]
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f'w must be position weights of shape (L,) = ({x_shape[-1]},) (or '
                     f'broadcastable to the keys {keys}), got shape {checks.shape_of(w)}')
  host = checks.concrete(w)
  if host is not None and not np.all(np.asarray(host, np.float64) >= 0):
    raise ValueError('w must hold non-negative finite position weights, got a negative or NaN '
                     'entry')


def zero_diagonal(P):
  """``P`` with its diagonal set to zero and rows renormalised (no token follows itself).

  Raises ValueError for a ``P`` not (..., K, K) with K >= 2 (a 1 x 1 chain has no off-diagonal
  mass).
  References: paper Fig. 5 (lower panels).
  """
  if checks.square('P', P, 'transition probabilities', batch=True) < 2:
    raise ValueError(f'P must have K >= 2 rows for a zero diagonal, got shape '
                     f'{checks.shape_of(P)}')
  P = jnp.asarray(P)
  Q = P * (1.0 - jnp.eye(P.shape[-1], dtype=P.dtype))
  return Q / Q.sum(axis=-1, keepdims=True)


def check_stochastic(P, name='P', atol=1e-4):
  """Raise ``ValueError`` unless ``P`` is a square, finite, non-negative row-stochastic matrix.

  Host-side validation for user-given matrices (run before anything is traced).
  """
  P = np.asarray(P, dtype=np.float64)
  if P.ndim != 2 or P.shape[0] != P.shape[1]:
    raise ValueError(f'{name} must be a square K x K matrix, got shape {P.shape}')
  if P.shape[0] < 2:
    raise ValueError(f'{name} must have K >= 2 rows, got K={P.shape[0]}')
  if not np.all(np.isfinite(P)) or np.any(P < 0):
    raise ValueError(f'{name} must have finite, non-negative entries')
  sums = P.sum(axis=1)
  bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
  if bad.size:
    raise ValueError(f'{name} is not row-stochastic: row {bad[0]} sums to {sums[bad[0]]:.6g}'
                     f' (allowed: every row sums to 1 within {atol})')
  return P


STOCHASTIC_ATOL = 1e-4  # rows summing to 1 within this, entries in [0, 1]: a P, not scores


def looks_stochastic(M, atol=STOCHASTIC_ATOL):
  """Whether each (K, K) matrix of ``M`` (..., K, K) looks like a row-stochastic ``P``: every
  entry finite and in [0, 1], every row summing to 1 within ``atol``. Traceable (a bool array).

  Scores ``A`` never do (Gaussian ``A*``, row-centred fits with zero row sums, ``log P <= 0``,
  ``-inf`` diagonals) except by contrivance, e.g. every score equal to ``1/K``.
  """
  M = jnp.asarray(M)
  entries = jnp.all(jnp.isfinite(M) & (M >= 0) & (M <= 1), axis=(-2, -1))
  rows = jnp.all(jnp.abs(jnp.sum(M, axis=-1) - 1.0) <= atol, axis=-1)
  return entries & rows


def check_scores(M, name='A'):
  """Raise ``ValueError`` when ``M`` looks like a row-stochastic ``P`` where scores ``A = W^T``
  (or ``log P``) are expected; return ``M``. ``M`` must be (..., K, K) (always, under ``jit``
  too); the values are checked only on concrete arrays: under ``jit`` that check does nothing
  (``fit.p_error`` then returns NaN instead).
  """
  checks.square(name, M, batch=True)
  host = checks.concrete(M)
  if host is not None and host.ndim >= 2 and np.any(np.asarray(looks_stochastic(host))):
    raise ValueError(f'{name} looks like a row-stochastic matrix P (entries in [0, 1], rows '
                     f'summing to 1) where scores A = W^T are expected: pass log(P) (or '
                     f'p_error(A_hat, P_true=P))')
  return M


def check_base_chain(P, atol=1e-3):
  """Raise ``ValueError`` when a concrete ``P`` (K, K) is not row-stochastic (e.g. weights ``W``
  or scores ``A`` passed where the base chain is expected); nothing under ``jit``."""
  host = checks.concrete(P)
  if host is None or host.ndim != 2:
    return
  host = host.astype(np.float64)
  sums = host.sum(axis=-1)
  if np.any(host < 0) or not np.all(np.abs(sums - 1.0) <= atol):
    raise ValueError(f'P must be a row-stochastic base chain (P = transition_matrix(W), not W or '
                     f'the scores A = W^T); got row sums in [{sums.min():.4g}, {sums.max():.4g}]'
                     f' and minimum entry {host.min():.4g}')
