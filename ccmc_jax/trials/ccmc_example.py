"""The paper's worked CCMC example (paper Sec. 2, Fig. 1 / Definition 2.1 / Lemma 2.2).

K = 3 tokens and the prompt X = [1, 2, 1] in the paper's 1-indexed notation (``[0, 1, 0]``
0-indexed, as in the code and the CSV). From attention weights ``W`` (E = I) every number of the
example is computed by the library, by both routes: the CCMC route (counts ``m(X)``, base chain
``P = softmax(W^T)``, ``pi^X_j ∝ m_j(X) P[x_L, j]``) and the attention route (scores over
positions, softmax, mass per token). Stored long-format: (quantity, row, col, value).
"""
from __future__ import annotations

import jax
import numpy as np

from ccmc_jax import model

# A = W^T has rows (0.4, 1.3, 0.3), (1.0, -0.5, 0.8), (0.2, 0.9, -0.3): from query token 1
# (paper indexing) the chain favours token 2, while the context holds token 1 twice, so pi^X
# visibly differs from both P[x_L] and m(X).
DEFAULT_W = ['0.4', '1.0', '0.2', '1.3', '-0.5', '0.9', '0.3', '0.8', '-0.3']
DEFAULT_X = ['0', '1', '0']
KEYS = ['quantity', 'row', 'col']
# |W_ij| <= MAX_ABS_W keeps every score gap <= 80, so every entry of the float32 P = softmax(A)
# is a normal number (>= e^-80 / 12 > 1.2e-38 for K <= 12): no entry underflows to 0, and the
# CCMC route (through P) equals the attention route (through the scores) to round-off.
MAX_ABS_W = 40.0
# Matrices use (row, col) = (i, j); vectors use row 0 and col = index (token, or position for X
# and the per-position attention quantities); scalars row = col = 0.
QUANTITIES = {
    'W': 'attention weights W (K x K)',
    'A': 'scores A[i, j] = e_j^T W e_i (K x K)',
    'P': 'base chain P = softmax(A, -1) (K x K)',
    'X': 'prompt: col = position, value = 0-indexed token',
    'query': 'the query token x_L (0-indexed)',
    'm': 'token counts m(X) of the keys',
    'm_freq': 'token frequencies m(X) / L',
    'P_query': 'the query row P[x_L, :]',
    'mP': 'unnormalised m_j(X) P[x_L, j]',
    'pi': 'next-token law pi^X (ccmc_next_token_probs)',
    'att_scores': 'attention scores e_{x_i}^T W e_{x_L} over positions i',
    'att_weights': 'attention weights s = softmax over positions',
    'att_output': 'attention output o_k = sum_{i: x_i = k} s_i (attention_next_token_probs)',
}
MATRICES = ('W', 'A', 'P')
CCMC_QUANTITIES = ('W', 'A', 'P', 'X', 'query', 'm', 'm_freq', 'P_query', 'mP', 'pi')


def example_quantities(W, X):
  """Every number of the worked example, by both routes (paper Fig. 1 and Fig. 2).

  Args:
    W: (K, K) attention weights (E = I).
    X: (L,) 0-indexed prompt; ``X[-1]`` is the query.
  Returns:
    dict name -> float64 numpy array (see ``QUANTITIES``): the CCMC route through the library's
    ``transition_matrix``/``token_counts``/``ccmc_next_token_probs`` and the attention route
    (scores and softmax over positions, then ``attention_next_token_probs``).
  References: paper Definition 2.1, Lemma 2.2, Fig. 1 and Fig. 2.
  """
  K = W.shape[0]
  W32 = np.asarray(W, np.float32)  # the library's float32; W itself is stored as given
  A = np.asarray(model.scores(W32))
  P = np.asarray(model.transition_matrix(W32))
  q = int(X[-1])
  m = np.asarray(model.token_counts(X, K))
  att_scores = A[q, X]  # e_{x_i}^T W e_{x_L} = A[x_L, x_i], one per position
  out = {
      'W': W, 'A': A, 'P': P, 'X': X, 'query': np.array([q]), 'm': m, 'm_freq': m / len(X),
      'P_query': P[q], 'mP': m * P[q],
      'pi': np.asarray(model.ccmc_next_token_probs(P, X)),
      'att_scores': att_scores,
      'att_weights': np.asarray(jax.nn.softmax(att_scores)),
      'att_output': np.asarray(model.attention_next_token_probs(W32, X)),
  }
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def to_columns(quantities, names):
  """Long-format columns (quantity, row, col, value) of the named quantities."""
  parts = []
  for name in names:
    v = np.atleast_1d(quantities[name])
    rows, cols = (np.indices(v.shape).reshape(2, -1) if v.ndim == 2
                  else (np.zeros(v.size, int), np.arange(v.size)))
    parts.append((np.repeat(name, v.size).astype(object), rows, cols, v.reshape(-1)))
  return dict(zip(KEYS + ['value'], (np.concatenate(c) for c in zip(*parts))))


def from_columns(quantity, row, col, value):
  """Inverse of :func:`to_columns`: dict name -> array (matrices 2-D, the others 1-D), in the
  order of first appearance. Raises ValueError on a negative index."""
  quantity, row, col = np.asarray(quantity), np.asarray(row, int), np.asarray(col, int)
  value = np.asarray(value, float)
  out = {}
  for name in dict.fromkeys(quantity.tolist()):
    sel = quantity == name
    r, c = row[sel], col[sel]
    if r.min() < 0 or c.min() < 0:
      raise ValueError(f'quantity {name} has a negative row/col index')
    a = np.full((r.max() + 1, c.max() + 1), np.nan)
    a[r, c] = value[sel]
    out[name] = a if name in MATRICES else a[0]
  return out
