"""The 1-layer self-attention layer itself, with trainable parameters: tied and untied.

Parameters are a pytree (:class:`Params`): token embeddings ``E`` (K x d), attention weights
``W`` (d x d) and an output head ``C`` (K x d). For a prompt ``X = (x_1, ..., x_L)`` (query
``x_L``) the attention over the key positions is ``s = softmax_i(E[x_i]^T W E[x_L])`` and the
layer's output is ``o = C sum_i s_i E[x_i]`` (K entries).

* **tied** (paper Sec. 2-3, the weight-tying constraint ``C E^T = I_K``): ``E`` has orthonormal
  rows (``d >= K``) and ``C`` is its pseudo-inverse transposed, so ``o = sum_i s_i e_{x_i}`` is
  itself the next-token probability vector: the CCMC ``pi^X`` of the base chain
  ``P = softmax(A)``, ``A = E W^T E^T`` (Lemma 2.2). The issue text writes ``A = E W E^T``: the
  suite's convention is ``A[i, j] = e_j^T W e_i`` (query row ``i``), i.e. ``A = E W^T E^T``
  (:func:`ccmc_jax.model.scores`), the same map up to a transpose of ``W``; we follow the suite.
  Only ``W`` is trained.
* **untied** (the usual layer): ``o`` are logits and the next token is ``~ softmax(o)``; ``E``,
  ``W`` and ``C`` are all trained, any ``d`` (also ``d < K``).

Two equal ways to compute the next-token law: :func:`next_token_probs` is the literal forward
pass, position by position; :func:`log_probs` works from the query and the key counts ``m(X)``
(what a :class:`ccmc_jax.sampling.Dataset` holds), summing the attention of equal tokens first:
``sum_i s_i E[x_i] = sum_j w_j E[j]`` with ``w = pi^X(A)`` (``A = scores(W, E)``), so the untied
logits are ``(C E^T) w`` and the tied output is ``w``. Training uses :func:`log_probs`; the
tests check it against the literal pass. Pure JAX, jit/vmap friendly.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ccmc_jax import model

TIED, UNTIED = 'tied', 'untied'


class Params(NamedTuple):
  """The layer's parameters (a pytree).

  Attributes:
    E: (K, d) token embeddings (row ``e_k``).
    W: (d, d) attention weights.
    C: (K, d) output head; ``C E^T = I_K`` in the tied layer.
  """
  E: jax.Array
  W: jax.Array
  C: jax.Array


def _check_shapes(params: Params):
  K, d = jnp.shape(params.E)
  if jnp.shape(params.W) != (d, d) or jnp.shape(params.C) != (K, d):
    raise ValueError(f'params must have E (K, d), W (d, d) and C (K, d); got E '
                     f'{jnp.shape(params.E)}, W {jnp.shape(params.W)}, C {jnp.shape(params.C)}')
  return K, d


def _check_kind(kind):
  if kind not in (TIED, UNTIED):
    raise ValueError(f'kind must be {TIED!r} or {UNTIED!r}, got {kind!r}')


def orthonormal_embeddings(key, K, d):
  """(K, d) embeddings with orthonormal rows (``E E^T = I_K``), uniformly random; needs d >= K.

  References: paper Sec. 2 (weight tying needs ``E`` of rank K).
  """
  if not 1 <= K <= d:
    raise ValueError(f'd must be >= K for orthonormal rows; got K={K}, d={d}')
  q, r = jnp.linalg.qr(jax.random.normal(key, (d, K), jnp.float32))
  return (q * jnp.sign(jnp.diagonal(r))).T  # the sign fix makes the law uniform (Haar)


def init_tied(key, K, d, scale=1.0):
  """Tied parameters: orthonormal ``E``, ``C = pinv(E)^T`` (so ``C E^T = I_K``), and
  ``W ~ N(0, scale^2)`` entries, so that ``A = E W^T E^T`` has ``N(0, scale^2)`` entries as
  ``A*`` has. References: paper Sec. 2-3 (weight tying)."""
  e_key, w_key = jax.random.split(key)
  E = orthonormal_embeddings(e_key, K, d)
  C = jnp.linalg.pinv(E).T
  return Params(E, scale * jax.random.normal(w_key, (d, d), jnp.float32), C)


def init_untied(key, K, d, scale=1.0):
  """Untied parameters from a random init: ``E, C ~ N(0, 1/d)`` entries (rows of norm ~1) and
  ``W ~ N(0, scale^2)``, so that the scores ``E[j]^T W E[q]`` are ``O(scale)`` at the start."""
  if K < 1 or d < 1:
    raise ValueError(f'K and d must be >= 1; got K={K}, d={d}')
  e_key, w_key, c_key = jax.random.split(key, 3)
  E = jax.random.normal(e_key, (K, d), jnp.float32) / jnp.sqrt(d)
  C = jax.random.normal(c_key, (K, d), jnp.float32) / jnp.sqrt(d)
  return Params(E, scale * jax.random.normal(w_key, (d, d), jnp.float32), C)


def next_token_probs(params: Params, X, kind=TIED):
  """The literal forward pass: ``s = softmax_i(E[x_i]^T W E[x_L])``, ``o = C sum_i s_i E[x_i]``.

  Args:
    params: :class:`Params`.
    X: int array (..., L) of prompts; ``X[..., -1]`` is the query (self-attention: a key too).
    kind: 'tied' (``o`` is the probability vector; needs ``C E^T = I_K``) or 'untied'
      (``softmax(o)``).
  Returns:
    (..., K) next-token probabilities.
  References: paper Sec. 2 (self-attention model), Fig. 2, Lemma 2.2.
  """
  _check_kind(kind)
  _check_shapes(params)
  emb = params.E[jnp.asarray(X)]  # (..., L, d)
  s = jax.nn.softmax(jnp.einsum('...id,de,...e->...i', emb, params.W, emb[..., -1, :]), -1)
  o = jnp.einsum('...i,...id,kd->...k', s, emb, params.C)
  return o if kind == TIED else jax.nn.softmax(o, axis=-1)


def log_probs(params: Params, query, counts, kind=TIED):
  """``log`` of the next-token law from the query and the key counts (equal tokens summed).

  ``sum_i s_i E[x_i] = sum_j w_j E[j]`` with ``w = pi^X(A)``, ``A = scores(W, E)``: the tied
  output is ``w`` (the constraint ``C E^T = I_K`` imposed: ``C`` is not read), the untied
  logits ``(C E^T) w``. Equals ``log next_token_probs`` (tests).

  Args:
    params: :class:`Params`.
    query: (...,) int query tokens.
    counts: (..., K) key counts ``m(X)`` (:func:`ccmc_jax.model.token_counts`).
    kind: 'tied' or 'untied'.
  Returns:
    (..., K) log-probabilities (``-inf`` on tokens absent from a tied prompt).
  References: paper Lemma 2.2 (the tied layer is the CCMC of ``P = softmax(E W^T E^T)``).
  """
  _check_kind(kind)
  K, _ = _check_shapes(params)
  if jnp.shape(counts)[-1] != K:
    raise ValueError(f'counts must have K={K} columns (the rows of E), got shape '
                     f'{jnp.shape(counts)}')
  log_w = model.ccmc_log_probs(model.scores(params.W, params.E)[query], counts)
  if kind == TIED:
    return log_w
  logits = jnp.exp(log_w) @ (params.E @ params.C.T)  # row t: (C E^T) w_t
  return jax.nn.log_softmax(logits, axis=-1)


def ridge_penalty(params: Params, kind=TIED):
  """``(1/2)||c(A)||_F^2`` for the tied layer, ``A = scores(W, E)`` and ``c`` the row centring;
  ``(1/2)(||E||^2 + ||W||^2 + ||C||^2)`` for the untied one.

  The tied NLL does not change when a constant is added to a row of ``A`` (the gauge), so
  ``NLL + ridge * this`` has the optimum value and ``P`` of the convex MLE's objective
  ``NLL + (ridge/2)||A||^2`` (``ccmc_jax.fit``; its minimiser is row-centred): the same
  problem, without a direction whose gradient is only ``ridge`` times a row mean (first-order
  methods would take ~1/ridge steps to centre the rows)."""
  _check_kind(kind)
  if kind == TIED:
    A = model.scores(params.W, params.E)
    return 0.5 * jnp.sum((A - A.mean(axis=-1, keepdims=True)) ** 2)
  return 0.5 * sum(jnp.sum(p ** 2) for p in params)
