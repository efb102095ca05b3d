"""Learning W from one trajectory vs from IID prompts (paper Sec. 4; docs/theory.md Sec. 7, fact 4).

For each trial: draw A* ~ N(0, scale^2) (P* = softmax(A*)), an initial prompt X0 of length L0,
and
  single: one growing-context trajectory of T_max tokens from X0 (trajectory.generate); step t
          is the sample (counts of X0 + x_1..x_{t-1}, query x_{t-1}, next token x_t)
          (trajectory.as_dataset), so its first T samples are exactly the trajectory of length T;
  iid:    T_max IID pairs (uniform prompt of length L0, y ~ pi^X(A*)) (sampling.sample_dataset).
Both are fit by the convex MLE (fit.fit_scores) on their first T samples, for every T of the grid,
with T a traced scalar: one compilation serves both sources, every trial and every T. Recorded:
||P_hat - P*||_F^2, the number of rows of P visited as a query (>= 1 sample), and per row the
visits and the row error ||P_hat[k] - P*[k]||^2.

X0 = a random permutation of all K tokens followed by L0 - K uniform tokens (L0 < K: the first
L0 tokens of the permutation), so with L0 >= K every row and column of P is identifiable in
principle; the single-trajectory error still stalls because the trajectory collapses onto a
few winner tokens and the other rows are visited ~log T times.

Outputs: results/trajectory_learning.csv (source, K, L0, T, trial, seed, error, visited_rows,
min_visits, ...), results/trajectory_learning_rows.csv (per-row visits and errors, long
format), figures/trajectory_learning.{png,pdf}.

  python -m experiments.trajectory_learning --K=6 --L0=10 --T=100,1000,10000 --trials=20
"""
from __future__ import annotations

import functools
import time

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_integer('K', 6, 'Vocabulary size K (paper Sec. 2), >= 2.')
_L0 = flags.DEFINE_integer('L0', 10, 'Initial prompt length L0 of the trajectory, also the '
                           'length L of the IID prompts (paper Sec. 3-4), >= 1.')
_T = flags.DEFINE_list('T', ['100', '316', '1000', '3162', '10000'],
                       'Sample sizes T: trajectory length (single) = number of IID prompts '
                       '(iid); each >= 1.')
_TRIALS = flags.DEFINE_integer('trials', 20, 'Independent trials (A*, X0, data) per T, >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Ground truth A* ~ N(0, scale^2); scale > 0.')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge (ridge/2)||A||^2 on the NLL; >= 0.')

NAME = 'trajectory_learning'
ROWS_NAME = 'trajectory_learning_rows'
SOURCES = ('single', 'iid')
KEYS = ['source', 'K', 'L0', 'T', 'trial']
ROW_KEYS = KEYS + ['row']
FLAG_NAMES = ['K', 'L0', 'T', 'trials', 'scale', 'ridge']


def apply_quick():
  """--quick: tiny settings for a smoke run (only flags the user did not set)."""
  for name, value in {'T': ['100', '1000'], 'trials': 4}.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 1000)
  common.check_int('L0', _L0.value, 1, 10 ** 5)
  common.check_int('T', _T.value, 1, 10 ** 7)
  common.check_int('trials', _TRIALS.value, 1, 10 ** 4)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  T_max, K = max(int(t) for t in _T.value), _K.value
  # Both data sets (counts dominate) plus the padded (K, T_max, K) fit layout, float32.
  common.check_memory('T', T_max, 4 * 2 * _TRIALS.value * T_max * K * (2 + 3 * K))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


@functools.lru_cache(maxsize=None)
def _generate(K, L0, T_max, scale):
  """jit(lax.map over trials): A*, the single-trajectory data set and the IID data set."""
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling, trajectory  # pylint: disable=import-outside-toplevel
  prompt_fn = sampling.uniform_prompt(K, L0)

  def make_trial(key):
    w_key, x_key, t_key, iid_key = jax.random.split(key, 4)
    A = sampling.sample_scores(w_key, K, scale)
    X0 = trajectory.initial_prompt(x_key, K, L0)
    traj = trajectory.generate(t_key, jax.nn.log_softmax(A, -1), X0, T_max, trace=False)
    single = trajectory.as_dataset(X0, traj.tokens, K)
    iid = sampling.sample_dataset(iid_key, A, T_max, L0, prompt_fn)
    return A, single, iid

  return jax.jit(lambda keys: jax.lax.map(make_trial, keys))


@functools.lru_cache(maxsize=None)
def _fit_cell(K, capacity, ridge):
  """jit(vmap over (source, trial)) of fit + errors + visits at a traced T."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel

  def cell(data, A, T):
    res = fit.fit_scores(data, K, capacity, T, ridge=ridge)
    row_error = jnp.sum((jax.nn.softmax(res.A_hat, -1) - jax.nn.softmax(A, -1)) ** 2, -1)
    valid = jnp.arange(data.query.shape[0]) < T
    visits = jnp.bincount(data.query, weights=valid.astype(jnp.int32), length=K).astype(jnp.int32)
    return row_error.sum(), row_error, visits, res.iters, res.dropped

  return jax.jit(jax.vmap(cell, in_axes=(0, 0, None)))


def trial_keys(seed, K, L0, trials):
  """Key of trial i: fold_in(fold_in(fold_in(seed, K), L0), i)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  root = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), K), L0)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(trials))


def run_experiment(results, rows):
  """Fit both sources at every T not yet in ``results``, writing after each T."""
  import jax  # pylint: disable=import-outside-toplevel
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel
  K, L0, trials, start = _K.value, _L0.value, _TRIALS.value, time.time()
  Ts = sorted({int(t) for t in _T.value})
  todo = [T for T in Ts if not results.done({'K': K, 'L0': L0, 'T': T})]
  if not todo:
    return
  A, single, iid = _generate(K, L0, max(Ts), _SCALE.value)(
      trial_keys(flags.FLAGS.seed, K, L0, trials))
  # Stack the two sources along the batch axis: one compiled fit for the whole sweep.
  data = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]), single, iid)
  A2 = np.concatenate([np.asarray(A)] * 2)
  capacity = fit.round_capacity(fit.row_capacity(data.query, K), 256)
  runner = _fit_cell(K, capacity, _RIDGE.value)
  common.progress(f'{NAME}: generated {trials} trials x {max(Ts)} samples per source', start)
  source = np.repeat(SOURCES, trials)
  trial = np.tile(np.arange(trials), 2)
  for T in todo:
    err, row_err, visits, iters, dropped = map(np.asarray, runner(data, A2, T))
    assert not dropped.any(), 'row capacity too small'  # by construction of `capacity`
    common_cols = {'source': source, 'K': K, 'L0': L0, 'T': T, 'trial': trial,
                   'seed': flags.FLAGS.seed}
    results.add(pd.DataFrame({
        **common_cols, 'error': err, 'visited_rows': (visits > 0).sum(-1),
        'min_visits': visits.min(-1), 'max_visits': visits.max(-1), 'newton_iters': iters}))
    rows.add(pd.DataFrame({
        **{k: np.repeat(v, K) if np.ndim(v) else v for k, v in common_cols.items()},
        'row': np.tile(np.arange(K), 2 * trials), 'visits': visits.reshape(-1),
        'row_error': row_err.reshape(-1)}))
    mean = {s: err[source == s].mean() for s in SOURCES}
    common.progress(f'{NAME}: T={T}: mean error single {mean["single"]:.3g}, '
                    f'iid {mean["iid"]:.3g}, rows visited (single) '
                    f'{(visits[source == "single"] > 0).sum(-1).mean():.2f}/{K}', start)


def summary(df):
  """Mean errors at the largest T and their ratio (single / iid), and the IID log-log slope."""
  T_max = int(df['T'].max())
  last = df[df['T'] == T_max].groupby('source')['error'].mean()
  out = {'T_max': T_max, 'mean_error_single': float(last.get('single', np.nan)),
         'mean_error_iid': float(last.get('iid', np.nan))}
  out['ratio_single_over_iid'] = out['mean_error_single'] / out['mean_error_iid']
  m = df[df['source'] == 'iid'].groupby('T')['error'].mean()
  if len(m) >= 2:
    out['iid_slope'] = float(np.polyfit(np.log(m.index.values), np.log(m.values), 1)[0])
  return out


def plot(csv_path, rows_path):
  """Figure from the CSVs only: error vs T for both sources, rows visited vs T, and per-row
  error vs visits at the largest T."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  num = ['K', 'L0', 'T', 'trial', 'error', 'visited_rows', 'min_visits']
  df = io.read_csv(csv_path, required=num + ['source'], numeric=num)
  rw = io.read_csv(rows_path, required=ROW_KEYS + ['visits', 'row_error'],
                   numeric=['T', 'row', 'visits', 'row_error'])
  if df.empty or not set(df['source']) & set(SOURCES):
    raise io.ResultsError(f'{csv_path} has no rows of a known source ({", ".join(SOURCES)})')
  K, L0 = int(df['K'].iloc[0]), int(df['L0'].iloc[0])
  s = summary(df)
  colors = {'single': 'tab:red', 'iid': 'tab:blue'}
  labels = {'single': 'one trajectory', 'iid': 'T IID prompts'}
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
  for src in SOURCES:
    g = df[df['source'] == src].groupby('T')
    if not len(g):
      continue
    T = np.array(sorted(g.groups))
    mean, q10, q90 = (g['error'].mean(), g['error'].quantile(0.1), g['error'].quantile(0.9))
    axes[0].plot(T, mean, 'o-', color=colors[src], label=f'{labels[src]} (mean)')
    axes[0].fill_between(T, q10, q90, color=colors[src], alpha=0.2)
  iid = df[df['source'] == 'iid'].groupby('T')['error'].mean()
  if len(iid):
    T = iid.index.values
    axes[0].plot(T, iid.iloc[-1] * T[-1] / T, ':', color='gray', lw=1, label='∝ 1/T')
  axes[0].set(xscale='log', yscale='log', xlabel='T (trajectory length = number of IID prompts)',
              ylabel='‖P̂ − P*‖²_F',
              title=f'K={K}, L0={L0}: at T={s["T_max"]} single/iid = '
                    f'{s["ratio_single_over_iid"]:.0f}x')
  axes[0].legend(fontsize=8)
  styles = {1: 'o-', 10: 's--', 100: '^:'}
  for src in SOURCES:
    d = rw[rw['source'] == src]
    for v, style in styles.items():
      if src == 'iid' and v > 1:
        continue
      n_rows = (d['visits'] >= v).groupby([d['T'], d['trial']]).sum().groupby('T').mean()
      axes[1].plot(n_rows.index, n_rows.values, style, color=colors[src],
                   label=f'{labels[src]}: rows with >= {v} visit{"s" if v > 1 else ""}')
  axes[1].axhline(K, color='gray', ls=':', lw=1)
  axes[1].set(xscale='log', ylim=(0, K + 0.5), xlabel='T',
              ylabel=f'rows of P (of K={K}), mean over trials',
              title='Rows of P visited as a query')
  axes[1].legend(fontsize=7)
  last = rw[rw['T'] == rw['T'].max()]
  for src in SOURCES:
    d = last[last['source'] == src]
    axes[2].scatter(np.maximum(d['visits'], 0.5), d['row_error'], s=10, alpha=0.5,
                    color=colors[src], label=labels[src])
  axes[2].set(xscale='log', yscale='log', xlabel='visits of the row as a query (0 drawn at 0.5)',
              ylabel='row error ‖P̂[k] − P*[k]‖²',
              title=f'Per-row error at T={int(rw["T"].max())} (every row, every trial)')
  axes[2].legend(fontsize=8)
  for ax in axes:
    ax.grid(True, which='both', alpha=0.3)
  fig.suptitle('Learning P from one trajectory vs from IID prompts: the trajectory collapses '
               'onto a few winner rows, the others stay unlearned (bands: 10-90% of trials)',
               fontsize=10)
  fig.tight_layout()
  return common.save_figure(fig, NAME)


def main(_):
  csv, rows_csv = common.csv_paths(NAME, ROWS_NAME)
  if not flags.FLAGS.plot_only:
    _, flag_dict = common.start(validate, FLAG_NAMES)
    results = common.Results(NAME, KEYS, flag_dict, flags.FLAGS.resume)
    rows = common.Results(ROWS_NAME, ROW_KEYS, flag_dict, flags.FLAGS.resume)
    run_experiment(results, rows)
    rows.finish()
    wall = results.finish(summary=summary(results.frame))
    common.progress(f'{NAME}: wrote {results.path} and {rows.path} in {wall:.1f} s')
  paths = plot(csv, rows_csv)
  common.progress(f'{NAME}: wrote {", ".join(paths)}')


if __name__ == '__main__':
  common.run(main, quick=apply_quick)
