"""Self- vs cross-attention: co-occurrence graphs and consistency (paper Fig. 3, Thm 3.4).

Graphs: for a hand-written prompt set and one query token k, the co-occurrence graph G_k of
the keys under self-attention (the query is a key) and cross-attention (it is not),
from ``identifiability.cooccurrence_graph`` (``docs/theory.md``, identifiability).

Trials: per trial, ``A* ~ N(0, scale^2)`` (K x K) and ``n_max`` IID prompts from
``sampling.two_group_prompt`` (contexts drawn from {0..K/2-1} or from {K/2..K-1}, never both;
so every cross-attention G_k has two components). The SAME prompts are answered once by the
self-attention model and once by the cross-attention one; each data set is fitted by the
convex MLE on its first n samples for every n of the grid and ``||P_hat - P*||_F^2`` recorded.
Self-attention is consistent (error ~ 1/n); cross-attention is not: the split of each row's
mass between the two groups is not identified and the error plateaus at the
:func:`identifiability_summary` prediction.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import fit
from ccmc_jax import identifiability
from ccmc_jax import model
from ccmc_jax import sampling
from ccmc_jax.trials import common

ATTENTIONS = ('self', 'cross')
GRAPH_COLUMNS = ['attention', 'kind', 'i', 'j', 'query', 'K', 'count', 'component',
                 'identifiable', 'tokens']
CAPACITY_MULTIPLE = 1024


class Setting(NamedTuple):
  K: int
  L: int
  ns: Tuple[int, ...]
  scale: float = 1.0
  ridge: float = 1e-5


def keys(seed, setting: Setting, trials):
  """Trial keys: ``trial_keys(seed, K, L)`` (as sample_complexity; ccmc_jax.trials.common)."""
  return common.trial_keys(seed, setting.K, setting.L, trials=trials)


def graph_columns(prompts, query):
  """Panel (a)'s data as columns (GRAPH_COLUMNS): prompts, nodes and edges of G_query for
  self- and cross-attention, from ``identifiability.cooccurrence_graph``."""
  prompts = np.asarray(prompts)
  K = int(max(prompts.max(), query)) + 1
  parts = []
  for attention in ATTENTIONS:
    g = identifiability.cooccurrence_graph(prompts, query, attention == 'cross', K=K)
    adj, comp, ident = g.adjacency[0], g.components[0], int(g.identifiable[0])
    base = {'attention': attention, 'query': query, 'K': K, 'identifiable': ident}
    keys_ = prompts[:, :-1] if attention == 'cross' else prompts
    parts.append({**base, 'kind': 'prompt', 'i': np.arange(len(prompts)), 'j': -1,
                  'count': (prompts[:, -1] == query).astype(int), 'component': -1,
                  'tokens': [' '.join(map(str, p)) for p in prompts]})
    key_counts = np.array([(keys_[prompts[:, -1] == query] == t).any(axis=1).sum()
                           for t in range(K)])
    parts.append({**base, 'kind': 'node', 'i': np.arange(K), 'j': -1, 'count': key_counts,
                  'component': comp, 'tokens': ''})
    i, j = np.nonzero(np.triu(adj, 1))
    parts.append({**base, 'kind': 'edge', 'i': i, 'j': j, 'count': adj[i, j],
                  'component': comp[i], 'tokens': ''})
  return common.concat_columns(parts, GRAPH_COLUMNS)


def _data(key, setting: Setting, n_max):
  """A*, the prompts and the two data sets (self, cross; stacked) of one trial."""
  K, L = setting.K, setting.L
  w_key, x_key, y_key = jax.random.split(key, 3)
  A = sampling.sample_scores(w_key, K, setting.scale)
  X = sampling.sample_prompts(x_key, n_max, L, sampling.two_group_prompt(K, L))
  data = [sampling.Dataset(X[:, -1], model.token_counts(X, K, cross),
                           sampling.sample_next_tokens(y_key, A, X, cross))
          for cross in (False, True)]
  return A, X, jax.tree.map(lambda s, c: jnp.stack([s, c]), *data)


def _errors(data, A, n, K, capacity, ridge):
  """(2,) errors, iterations and dropped samples of the self and cross fits on the first n."""
  def one(d):
    res = fit.fit_scores(d, K, capacity, n, ridge=ridge)
    return fit.p_error(res.A_hat, A), res.iters, res.dropped
  return jax.vmap(one)(data)


@functools.lru_cache(maxsize=None)
def _generate_stage(setting: Setting, n_max):
  """jit(lax.map over trials) of the data: lax.map, not vmap, because each trial's sampling is
  already vectorised over samples (see ccmc_jax.trials.sample_complexity)."""
  return jax.jit(lambda k: jax.lax.map(lambda key: _data(key, setting, n_max), k))


@functools.lru_cache(maxsize=None)
def _fit_stage(K, capacity, ridge):
  """jit(vmap over trials) of both fits at a traced n: one compilation for every n."""
  return jax.jit(jax.vmap(lambda d, A, n: _errors(d, A, n, K, capacity, ridge),
                          in_axes=(0, 0, None)))


def generate(setting: Setting, keys):  # pylint: disable=redefined-outer-name
  """(A*, X, data) of every trial of ``keys``; data stacked (trials, 2 attentions, ...)."""
  return _generate_stage(setting, max(setting.ns))(keys)


def capacity(data, K):
  """Host-side per-row capacity of the stacked data sets (shared by both attentions)."""
  return fit.round_capacity(fit.row_capacity(data.query[:, 0], K), CAPACITY_MULTIPLE)


def run_setting(setting: Setting, keys, ns=None):  # pylint: disable=redefined-outer-name
  """Yields (n, {attention: dict of (trials,) arrays error, identifiable_rows,
  predicted_floor, newton_iters}) for each n of ``ns`` (default ``setting.ns``). ``keys`` is
  the trial-vmap boundary."""
  A, X, data = generate(setting, keys)
  X, A_host = np.asarray(X), np.asarray(A)
  fit_cell = _fit_stage(setting.K, capacity(data, setting.K), setting.ridge)
  for n in setting.ns if ns is None else ns:
    err, iters, dropped = map(np.asarray, fit_cell(data, A, n))
    assert not dropped.any(), 'row capacity too small'  # by construction of `capacity`
    out = {}
    for a, attention in enumerate(ATTENTIONS):
      rows, floor = identifiability_summary(A_host, X, n, attention == 'cross', setting.K)
      out[attention] = {'error': err[:, a], 'identifiable_rows': rows,
                        'predicted_floor': floor, 'newton_iters': iters[:, a]}
    yield n, out


def make_run_trial(setting: Setting, data_capacity):
  """One trial from its key, unbatched: ``run_trial(key) -> {'error', 'newton_iters'}``, each
  (len(ns), 2) over the n grid and (self, cross)."""
  def run_trial(key):
    A, _, data = _data(key, setting, max(setting.ns))
    out = [_errors(data, A, n, setting.K, data_capacity, setting.ridge)[:2] for n in setting.ns]
    err, iters = (jnp.stack(v) for v in zip(*out))
    return {'error': err, 'newton_iters': iters}
  return run_trial


def _softmax(S):
  e = np.exp(S - S.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def identifiability_summary(A, X, n, cross, K):
  """Per trial, from its first n prompts: identifiable rows of P, and the predicted plateau.

  The plateau is ||softmax(A_mn) - P*||_F^2 with A_mn the minimum-norm scores agreeing with A*
  on the identified differences (one free offset per component of each G_k; paper Thm 3.4):
  the limit of the ridge-regularised MLE as n -> inf; 0 when every row is identifiable.

  Args:
    A: (trials, K, K) true scores; X: (trials, N >= n, L) prompts.
  Returns:
    ((trials,) int, (trials,) float).
  """
  rows, floor = [], []
  for a, x in zip(A, X):
    g = identifiability.cooccurrence_graph(x[:n], None, cross, K=K)
    A_mn = identifiability.min_norm_scores(a, identifiability.component_labels(g))
    rows.append(int(g.identifiable.sum()))
    # Exactly 0 when identifiable (A_mn is then the row-centred A*: only rounding would remain).
    floor.append(0.0 if g.all_identifiable else
                 float(((_softmax(A_mn) - _softmax(np.asarray(a, np.float64))) ** 2).sum()))
  return np.array(rows), np.array(floor)


def summary(frame):
  """Slope of log(mean error) vs log(n) per attention, the mean error and predicted floor at
  the largest n, and cross/self error at the largest n."""
  out = {f'{a}_slope': s for a, s in common.mean_slopes(frame, 'attention').items()}
  for attention, g in frame.groupby('attention'):
    m = g.groupby('n')['error'].mean()
    out[f'{attention}_error_at_max_n'] = float(m.iloc[-1])
    if 'predicted_floor' in g:
      out[f'{attention}_predicted_floor_at_max_n'] = float(
          g[g['n'] == g['n'].max()]['predicted_floor'].mean())
  if {'self_error_at_max_n', 'cross_error_at_max_n'} <= set(out):
    out['cross_self_ratio_at_max_n'] = out['cross_error_at_max_n'] / out['self_error_at_max_n']
  return out
