"""Learning P from one trajectory vs from IID prompts (paper Sec. 4: a single trajectory
collapses, so most rows of P are rarely visited as a query).

Trial i of (K, L0) uses ``trial_keys(seed, K, L0)[i]``, split into (A*, X0, trajectory, IID)
keys: A* ~ N(0, scale^2), X0 = ``trajectory.initial_prompt(K, L0)``, and
  single: one growing-context trajectory of T_max tokens from X0; step t is the sample
          (counts of X0 + x_1..x_{t-1}, query x_{t-1}, next token x_t) (``trajectory.as_dataset``),
          so its first T samples are exactly the trajectory of length T;
  iid:    T_max IID pairs (uniform prompt of length L0, y ~ pi^X(A*)) (``sampling.sample_dataset``).
Both are fit by the convex MLE (``fit.fit_scores``) on their first T samples for every T of the
grid, T traced: one compilation serves both sources, every trial and every T.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import fit
from ccmc_jax import sampling
from ccmc_jax import trajectory
from ccmc_jax.trials import common

SOURCES = ('single', 'iid')


def make_run_trial(K, L0, T_max, scale=1.0):
  """``run_trial(key) -> {'A', 'single', 'iid'}``: the ground-truth scores A* and the two data
  sets (``sampling.Dataset`` of T_max samples each) of one trial."""
  prompt_fn = sampling.uniform_prompt(K, L0)

  def run_trial(key):
    w_key, x_key, t_key, iid_key = jax.random.split(key, 4)
    A = sampling.sample_scores(w_key, K, scale)
    X0 = trajectory.initial_prompt(x_key, K, L0)
    traj = trajectory.generate(t_key, jax.nn.log_softmax(A, -1), X0, T_max, trace=False)
    return {'A': A, 'single': trajectory.as_dataset(X0, traj.tokens, K),
            'iid': sampling.sample_dataset(iid_key, A, T_max, L0, prompt_fn)}

  return run_trial


def make_fit_cell(K, capacity, ridge):
  """``cell(data, A, T) -> dict``: the MLE on the first T samples of ``data`` (T may be
  traced) and its errors: ``error`` = ||P_hat - P*||_F^2, ``row_error`` (K,) =
  ||P_hat[k] - P*[k]||^2, ``visits`` (K,) = samples with query k, ``iters``, ``dropped``."""
  def cell(data, A, T):
    res = fit.fit_scores(data, K, capacity, T, ridge=ridge)
    row_error = jnp.sum((jax.nn.softmax(res.A_hat, -1) - jax.nn.softmax(A, -1)) ** 2, -1)
    valid = jnp.arange(data.query.shape[0]) < T
    visits = jnp.bincount(data.query, weights=valid.astype(jnp.int32), length=K).astype(jnp.int32)
    return {'error': row_error.sum(), 'row_error': row_error, 'visits': visits,
            'iters': res.iters, 'dropped': res.dropped}

  return cell


@functools.lru_cache(maxsize=None)
def _generate(K, L0, T_max, scale):
  return jax.jit(lambda keys: jax.lax.map(make_run_trial(K, L0, T_max, scale), keys))


@functools.lru_cache(maxsize=None)
def _fit(K, capacity, ridge):
  return jax.jit(jax.vmap(make_fit_cell(K, capacity, ridge), in_axes=(0, 0, None)))


def run(seed, K, L0, Ts, trials, scale=1.0, ridge=1e-6):
  """Yield ``(T, table, rows)`` for each T of ``Ts`` (ascending): the columns of the two
  results tables. ``table``: one row per (source, trial) with ``error``, ``visited_rows``,
  ``min_visits``, ``max_visits``, ``newton_iters``; ``rows``: one row per (source, trial, row
  of P) with ``visits`` and ``row_error``. The single trajectory's trials come first."""
  Ts = sorted(Ts)
  if not Ts:
    return
  out = _generate(K, L0, max(Ts), scale)(common.trial_keys(seed, K, L0, trials=trials))
  # Stack the two sources along the batch axis: one compiled fit for the whole sweep.
  data = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]),
                      out['single'], out['iid'])
  A2 = np.concatenate([np.asarray(out['A'])] * 2)
  capacity = fit.round_capacity(fit.row_capacity(data.query, K), 256)
  runner = _fit(K, capacity, ridge)
  for T in Ts:
    res = {k: np.asarray(v) for k, v in runner(data, A2, T).items()}
    assert not res['dropped'].any(), 'row capacity too small'  # by construction
    key = {'source': np.repeat(SOURCES, trials), 'K': K, 'L0': L0, 'T': T,
           'trial': np.tile(np.arange(trials), 2), 'seed': seed}
    visits = res['visits']
    table = {**key, 'error': res['error'], 'visited_rows': (visits > 0).sum(-1),
             'min_visits': visits.min(-1), 'max_visits': visits.max(-1),
             'newton_iters': res['iters']}
    rows = {**{k: np.repeat(v, K) if np.ndim(v) else v for k, v in key.items()},
            'row': np.tile(np.arange(K), 2 * trials), 'visits': visits.reshape(-1),
            'row_error': res['row_error'].reshape(-1)}
    yield T, table, rows


def summary(frame):
  """Mean errors at the largest T, their ratio (single / iid), the IID log-log slope of the
  mean error in T, and the mean number of rows the single trajectory visits at the largest T."""
  T_max = int(frame['T'].max())
  last = frame[frame['T'] == T_max]
  mean = last.groupby('source')['error'].mean()
  out = {'T_max': T_max, 'mean_error_single': float(mean.get('single', np.nan)),
         'mean_error_iid': float(mean.get('iid', np.nan))}
  out['ratio_single_over_iid'] = out['mean_error_single'] / out['mean_error_iid']
  slopes = common.mean_slopes(frame[frame['source'] == 'iid'], 'source', x='T', y='error')
  if 'iid' in slopes:
    out['iid_slope'] = slopes['iid']
  if 'visited_rows' in frame:
    single = last[last['source'] == 'single']
    out['single_mean_visited_rows'] = float(single['visited_rows'].mean())
  return out
