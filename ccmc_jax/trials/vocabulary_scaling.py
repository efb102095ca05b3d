"""Vocabulary scaling: the K²/n law of the MLE over two decades of K (beyond the paper).

Paper Sec. 3 (Figs. 4 and 6) shows ``||P_hat - P*||_F^2 ~ K^2 / n`` for K = 5, 10, 20. Here K
runs from 8 to 512 or more, with ``n`` proportional to ``K^2`` so that every K sits at the same
point of its learning curve: if the law holds, ``error * n / K^2`` is flat in K and the
least-squares exponent ``b`` of ``mean(error) * n ∝ K^b`` is 2.

A trial of a cell (K, L, n): draw ``A* ~ N(0, scale^2)`` (K x K), ``n`` IID uniform prompts of
``L`` token ids with answers ``y ~ pi^X(A*)`` (``sampling.sample_sparse_dataset``: O(nL) memory,
no count vectors), fit the MLE as ``ccmc_jax.fit_mle`` does (:func:`fit_scores`) and record
``error = ||P_hat - P*||_F^2`` and the asymptotic prediction ``(1/n) sum_k tr(J_k F_k^+ J_k)`` at ``A*`` (``predicted_error``;
``docs/theory.md``). The trials of a cell run as one ``jit(vmap(run_trial))`` with the trial
axis sharded over the local devices (``ccmc_jax.sharding``).

Trials per K: the error at K is a sum of K² entry errors, so its spread across trials shrinks
like 1/K; :func:`trials_at` keeps ``trials * K^2`` about constant, with a floor.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import numpy as np

from ccmc_jax import fit
from ccmc_jax import sampling
from ccmc_jax import sharding
from ccmc_jax import sparse_fit
from ccmc_jax import theory
from ccmc_jax.trials import common

K_REF = 8  # the vocabulary size at which --trials trials run (trials_at)
# The figure's claims (issue: two decades of K, the paper's rate, the exact constant).
MIN_SPAN, MIN_MAX_K = 64, 512
RATIO_RANGE = (0.8, 1.25)
EXPONENT_RANGE = (1.8, 2.2)
FIT_TOL, FIT_MAX_ITER = 1e-4, 100  # fit_mle's defaults


class Setting(NamedTuple):
  """One cell of the sweep."""
  K: int
  L: int
  n: int
  scale: float = 1.0   # A* ~ N(0, scale^2)
  ridge: float = 1e-6  # (ridge/2)||A||^2 on the NLL, as fit_mle


def sample_size(K, n_over_K2):
  """``n = round(n_over_K2 * K^2)``."""
  return int(round(n_over_K2 * K * K))


def trials_at(K, trials, min_trials):
  """Trials at vocabulary size K: ``max(min_trials, ceil(trials * (K_REF / K)^2))`` (``trials``
  at K = 8, a quarter of them at 16, ... never fewer than ``min_trials``)."""
  return max(int(min_trials), math.ceil(trials * (K_REF / K) ** 2))


def keys(seed, setting: Setting, trials):
  """Trial keys of a cell: ``trial_keys(seed, K, L, n)`` (see ``ccmc_jax.trials.common``)."""
  return common.trial_keys(seed, setting.K, setting.L, setting.n, trials=trials)


def data_capacity(K, n):
  """Per-row slots of the dense Newton fit (small K): the row count's mean ``n/K`` plus 8
  standard deviations, rounded up; a trial that overflows it is reported (``dropped``)."""
  return fit.round_capacity(n / K + 8 * math.sqrt(n / K) + 8)


def fit_scores(prompts, answers, K, ridge):
  """``ccmc_jax.fit_mle(prompts, answers, K, ridge=ridge)`` (method 'auto') in a traceable form,
  for ``jit(vmap(...))`` over trials: ``fit_mle`` itself checks its inputs on the host. The same
  solvers, settings and choice between them (``sparse_fit.choose_method``); the tests check
  the two agree. Returns (A_hat, iterations, samples dropped)."""
  n = prompts.shape[0]
  if sparse_fit.choose_method(K, n) == 'newton':
    res = sparse_fit._newton_fit(prompts, answers, K, data_capacity(K, n), False, ridge,  # pylint: disable=protected-access
                                 FIT_TOL, FIT_MAX_ITER)
    return res.A_hat, res.iters, res.dropped
  A_hat, iters, _ = sparse_fit._cg_fit(prompts, answers, K=K, cross=False, ridge=ridge,  # pylint: disable=protected-access
                                       tol=FIT_TOL, max_iter=FIT_MAX_ITER)
  return A_hat, iters, jax.numpy.int32(0)


def make_run_trial(setting: Setting):
  """One trial as a function of its key: ``run_trial(key) ->`` dict of error, iterations,
  dropped (samples beyond the Newton capacity: must be 0) and the true scores ``A`` (K, K)."""
  K, L, n = setting.K, setting.L, setting.n

  def run_trial(key):
    w_key, data_key = jax.random.split(key)
    A = sampling.sample_scores(w_key, K, setting.scale)
    prompts, answers = sampling.sample_sparse_dataset(data_key, A, n, L)
    A_hat, iters, dropped = fit_scores(prompts, answers, K, setting.ridge)
    return {'error': fit.p_error(A_hat, A), 'iterations': iters, 'dropped': dropped, 'A': A}

  return run_trial


@functools.lru_cache(maxsize=None)
def _cell(setting: Setting):
  return sharding.vmap_trials(make_run_trial(setting))


def run_cell(setting: Setting, keys):  # pylint: disable=redefined-outer-name
  """Every trial of a cell: ``keys`` (trials, 2) -> dict of (trials,) numpy arrays error,
  predicted_error, iterations. The fits run as one ``jit(vmap)`` per cell, trials sharded over
  the local devices; the prediction (float64, on the host) from each trial's ``A*``."""
  out = {k: np.asarray(v) for k, v in _cell(setting)(keys).items()}
  if out.pop('dropped').any():
    raise RuntimeError(f'K={setting.K}, n={setting.n}: a query row overflowed the Newton '
                       'capacity (data_capacity)')  # 8 standard deviations: never in practice
  A = out.pop('A')
  out['predicted_error'] = np.array([theory.predicted_error_uniform(a, setting.L, setting.n)
                                     for a in A])
  return out


def cell_means(frame):
  """Per (n_over_K2, K): mean error, mean predicted_error, n (a long-format results table)."""
  return frame.groupby(['n_over_K2', 'K']).agg(
      error=('error', 'mean'), predicted=('predicted_error', 'mean'), n=('n', 'first'))


def exponents(frame):
  """{n_over_K2: b}, the least-squares exponent of ``mean(error) * n ∝ K^b`` over the K of that
  n/K² (b = 2 is the paper's K²/n rate)."""
  out = {}
  for r, g in cell_means(frame).groupby(level=0):
    K = g.index.get_level_values(1).to_numpy()
    if len(K) >= 2:
      out[float(r)] = common.loglog_slope(K, g['error'] * g['n'])
  return out


def ratios(frame):
  """{K: mean error / mean predicted_error} at each K's largest n."""
  out = {}
  for K, g in frame.groupby('K'):
    top = g[g['n'] == g['n'].max()]
    out[int(K)] = float(top['error'].mean() / top['predicted_error'].mean())
  return out


def failures(frame):
  """The figure's claims that ``frame`` does not meet, as messages (empty: all hold): K spans
  >= 64x with max K >= 512; at each K's largest n, mean error / mean predicted in [0.8, 1.25];
  the exponent b at each n/K² in [1.8, 2.2]."""
  bad = []
  Ks = sorted(frame['K'].unique())
  if not Ks or Ks[-1] < MIN_MAX_K or Ks[-1] / Ks[0] < MIN_SPAN:
    bad.append(f'K spans {Ks[0] if Ks else 0}..{Ks[-1] if Ks else 0}: need max K >= '
               f'{MIN_MAX_K} and a span >= {MIN_SPAN}x')
  lo, hi = RATIO_RANGE
  bad += [f'K={K}: error / predicted = {r:.3f} outside [{lo}, {hi}]'
          for K, r in ratios(frame).items() if not lo <= r <= hi]
  lo, hi = EXPONENT_RANGE
  bad += [f'n/K^2={c:g}: exponent b = {b:.3f} outside [{lo}, {hi}]'
          for c, b in exponents(frame).items() if not lo <= b <= hi]
  return bad


def summary(frame):
  """The sidecar's summary: exponents, ratios and the unmet claims."""
  return {'exponents': {f'n/K2={c:g}': b for c, b in exponents(frame).items()},
          'ratios': {f'K={K}': r for K, r in ratios(frame).items()},
          'failures': failures(frame)}
