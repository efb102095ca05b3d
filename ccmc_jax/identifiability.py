"""Identifiability of the base chain from a prompt support: co-occurrence graphs (paper Thm 3.4).

Row ``k`` of the scores enters the likelihood only through prompts whose query is ``k``, and a
prompt with key set ``S`` reveals only score differences ``A[k, i] - A[k, j]`` for ``i, j`` in
``S`` (``pi^X`` is a softmax over ``S``; Lemma 2.2). So row ``k`` of ``P`` is determined by the
support of the prompt distribution iff the co-occurrence graph ``G_k`` -- nodes ``[K]``, an edge
``{i, j}`` whenever ``i`` and ``j`` are keys of one prompt with query ``k`` -- is connected and
covers every token: each connected component keeps one free additive offset, and a token that is
never a key has no score at all. Self-attention puts the query among the keys, so ``G_k`` is a
star around ``k`` plus more edges (connected; only coverage can fail); cross-attention drops
the query and can split ``G_k`` (paper Fig. 3; ``sampling.two_group_prompt``).

Host-side NumPy: these are small combinatorial summaries of a (finite) prompt set.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from ccmc_jax import checks


class CooccurrenceGraphs(NamedTuple):
  """Co-occurrence graphs ``G_k`` of a prompt set, one per query token ``k`` in ``queries``.

  Attributes:
    queries: (Q,) the query tokens ``k`` (0-indexed).
    adjacency: (Q, K, K) int, ``adjacency[q, i, j]`` = number of prompts with query
      ``queries[q]`` having both ``i != j`` among their keys (symmetric, zero diagonal).
    present: (Q, K) bool, token ``j`` is a key of some prompt with that query.
    components: (Q, K) int, component label of each present token, numbered 0, 1, ... in order
      of the smallest token of each component; -1 for tokens that are never keys.
    n_components: (Q,) int, components among the present tokens (0 when the query never occurs).
    prompts: (Q,) int, number of prompts with that query.
    connected: (Q,) bool, the present tokens form one component (and there is at least one).
    covers: (Q,) bool, every token of ``[K]`` is present.
    identifiable: (Q,) bool, ``connected & covers``: row ``k`` of ``P`` is determined (Thm 3.4).
  """
  queries: np.ndarray
  adjacency: np.ndarray
  present: np.ndarray
  components: np.ndarray
  n_components: np.ndarray
  prompts: np.ndarray
  connected: np.ndarray
  covers: np.ndarray
  identifiable: np.ndarray

  @property
  def all_identifiable(self) -> bool:
    """Whether every listed row of ``P`` is identifiable (the whole chain when all K queries)."""
    return bool(np.all(self.identifiable))


def connected_components(adjacency, nodes):
  """Connected components of the subgraph induced on ``nodes``, by min-label propagation.

  Args:
    adjacency: (K, K) array, nonzero = edge (symmetric).
    nodes: (K,) bool, the nodes of the subgraph.
  Returns:
    (labels, count): (K,) int labels 0..count-1 numbered by smallest member, -1 off ``nodes``.
  """
  adj = np.asarray(adjacency) != 0
  nodes = np.asarray(nodes, bool)
  K = adj.shape[0]
  adj = adj & nodes[:, None] & nodes[None, :]
  labels = np.where(nodes, np.arange(K), K)
  # Each sweep gives every node the smallest label among itself and its neighbours; labels are
  # final once a sweep changes nothing (at most diameter + 1 sweeps, each O(K^2)).
  while True:
    neighbour_min = np.where(adj, labels[None, :], K).min(axis=1, initial=K)
    new = np.where(nodes, np.minimum(labels, neighbour_min), K)
    if np.array_equal(new, labels):
      break
    labels = new
  roots = np.unique(labels[nodes])
  out = np.full(K, -1, np.int64)
  out[nodes] = np.searchsorted(roots, labels[nodes])
  return out, int(roots.size)


def cooccurrence_graph(prompts, query: Union[None, int, Sequence[int]] = None, cross=False,
                       K: Optional[int] = None) -> CooccurrenceGraphs:
  """Co-occurrence graphs ``G_k`` of the keys of a prompt set, and the identifiability test.

  For each query token ``k``, two tokens are joined when they are both keys of one prompt whose
  last token (the query) is ``k``. Self-attention keys are all ``L`` tokens, the query included;
  cross-attention keys are the first ``L - 1`` (the query is not a key). Row ``k`` of the base
  chain ``P`` is identifiable from prompts in this set iff ``G_k`` is connected and covers all
  ``K`` tokens (paper Thm 3.4; ``docs/theory.md`` Sec. 5 proves it; ``tests/test_figures_2_3.py``
  checks it against the rank of the score differences the prompts reveal).

  Args:
    prompts: int array (N, L) (or one prompt (L,)) of 0-indexed tokens: the support, or a sample
      from it.
    query: the query token(s) ``k`` to report; None means every token of ``[K]``.
    cross: cross-attention keys (needs ``L >= 2``).
    K: vocabulary size; None means ``max(prompts) + 1``.
  Returns:
    CooccurrenceGraphs with one entry per query token.
  Raises:
    ValueError: on prompts that are not a non-empty 2-D array of integers in ``[0, K)``, on
      ``cross`` with ``L < 2``, or on a query outside ``[0, K)``.
  References: paper Theorem 3.4 (consistency: connectivity and coverage), Fig. 3.
  """
  X = np.asarray(prompts)
  if X.ndim == 1:
    X = X[None, :]
  if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
    raise ValueError(f'prompts must be a non-empty (N, L) array of tokens, got shape {X.shape}')
  if X.dtype.kind not in 'iu':
    if X.dtype.kind != 'f' or not np.all(np.isfinite(X)) or np.any(X != np.round(X)):
      raise ValueError(f'prompts must hold integer tokens, got dtype {X.dtype}')
    X = X.astype(np.int64)
  if X.min() < 0:
    raise ValueError(f'prompts must hold tokens >= 0, got {X.min()}')
  K = int(X.max()) + 1 if K is None else checks.size('K', K)
  if X.max() >= K:
    raise ValueError(f'prompts hold token {X.max()} but K={K} (tokens are 0..K-1)')
  if cross and X.shape[1] < 2:
    raise ValueError('cross-attention needs prompts of length L >= 2 (the query is not a key)')
  queries = np.arange(K) if query is None else np.atleast_1d(np.asarray(query, np.int64))
  if queries.ndim != 1 or np.any((queries < 0) | (queries >= K)):
    raise ValueError(f'query must be tokens in [0, {K - 1}], got {query}')

  keys = X[:, :-1] if cross else X
  member = np.zeros((X.shape[0], K), np.int64)  # member[t, j] = token j is a key of prompt t
  member[np.arange(X.shape[0])[:, None], keys] = 1
  q_of = X[:, -1]
  Q = len(queries)
  adjacency = np.zeros((Q, K, K), np.int64)
  present = np.zeros((Q, K), bool)
  components = np.full((Q, K), -1, np.int64)
  n_components = np.zeros(Q, np.int64)
  counts = np.zeros(Q, np.int64)
  for a, k in enumerate(queries):  # a loop over the (few) query tokens, not over prompts
    rows = member[q_of == k]
    co = rows.T @ rows  # co[i, j] = prompts with both i and j among the keys
    present[a] = np.diag(co) > 0
    np.fill_diagonal(co, 0)
    adjacency[a] = co
    components[a], n_components[a] = connected_components(co, present[a])
    counts[a] = rows.shape[0]
  connected = n_components == 1
  covers = present.all(axis=1)
  return CooccurrenceGraphs(queries, adjacency, present, components, n_components, counts,
                            connected, covers, connected & covers)


def component_labels(graphs: CooccurrenceGraphs):
  """(Q, K) labels where each token never seen as a key gets a component of its own.

  This is the partition of ``[K]`` into the blocks whose score offsets the data cannot fix:
  the scores of row ``k`` are identifiable exactly up to one additive constant per block.
  """
  labels = graphs.components.copy()
  for a in range(labels.shape[0]):
    absent = np.flatnonzero(labels[a] < 0)
    labels[a, absent] = graphs.n_components[a] + np.arange(absent.size)
  return labels


def min_norm_scores(A, labels):
  """The minimum-norm scores that agree with ``A`` on every identified difference.

  Row ``k`` of the data fixes ``A[k, i] - A[k, j]`` only within one block of ``labels[k]``
  (:func:`component_labels`); among all scores that do, the one of least norm centres each
  block. This is where a ridge-regularised MLE converges as ``n -> inf`` (the ridge alone acts
  along the unidentified offsets), so ``softmax`` of it gives the error plateau of an
  unidentifiable chain; with one block per row it is the row-centred ``A``, i.e. ``P`` itself.

  Args:
    A: (K, K) scores (finite).
    labels: (K, K) int block labels per row, e.g. ``component_labels(graphs)`` for all queries.
  Returns:
    (K, K) float64 scores, each block of each row centred.
  References: paper Thm 3.4 (identifiability up to one offset per component).
  """
  A = np.asarray(A, np.float64)
  labels = np.asarray(labels)
  out = A.copy()
  for k in range(A.shape[0]):
    for c in np.unique(labels[k]):
      block = labels[k] == c
      out[k, block] -= A[k, block].mean()
  return out
