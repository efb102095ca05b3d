"""Sample complexity of learning the CCMC from n IID prompts (paper Sec. 3, Figs. 4 and 6).

For each (K, L) setting and trial: draw A* ~ N(0, scale^2), n_max IID prompts and answers
y ~ pi^X(A*), fit the convex MLE on the first n samples for every n of the grid, and record
||P_hat - P*||_F^2. The asymptotic prediction (1/n) sum_k tr(J_k F_k^+ J_k) is computed per
trial from a Monte-Carlo Fisher information. Writes results/sample_complexity.csv (one row per
K, L, n, trial) and figures/sample_complexity.{png,pdf}.

  python -m experiments.sample_complexity --K=5,10,20 --n=1000,10000,100000 --trials=20
"""
from __future__ import annotations

import functools
import time

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_list('K', ['5', '10', '20'], 'Vocabulary sizes K (paper Sec. 2), >= 2.')
_L = flags.DEFINE_list('L', ['10'], 'Prompt lengths L (paper Sec. 2), >= 1 (>= 2 with --cross).')
_N = flags.DEFINE_list('n', ['1000', '2154', '4642', '10000', '21544', '46416', '100000'],
                       'Sample sizes n: number of IID (prompt, next token) pairs (Sec. 3).')
_TRIALS = flags.DEFINE_integer('trials', 20, 'Independent trials per (K, L, n), >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Ground truth A* ~ N(0, scale^2); scale > 0.')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge (ridge/2)||A||^2 on the NLL; >= 0.')
_CROSS = flags.DEFINE_bool('cross', False, 'Cross-attention: the query is not a key.')
_PROMPTS = flags.DEFINE_string('prompts', 'uniform', 'Prompt distribution: uniform, two_group.')
_L_SWEEP = flags.DEFINE_list('L_sweep', [], 'Extra prompt lengths run at K = --K_for_L only.')
_K_FOR_L = flags.DEFINE_integer('K_for_L', 10, 'Vocabulary size of the --L_sweep settings.')
_MC = flags.DEFINE_integer('mc_samples', 50000,
                           'Monte-Carlo prompts per trial for the Fisher information; >= 1000.')

KEYS = ['K', 'L', 'n', 'trial']
NAME = 'sample_complexity'
FLAG_NAMES = ['K', 'L', 'n', 'trials', 'scale', 'ridge', 'cross', 'prompts', 'L_sweep',
              'K_for_L', 'mc_samples']


def apply_quick():
  """--quick: tiny settings for a smoke run (only flags the user did not set)."""
  quick = {'K': ['3', '5'], 'n': ['300', '1000', '3000'], 'trials': 4, 'mc_samples': 5000,
           'L_sweep': []}
  for name, value in quick.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def settings():
  """The (K, L) pairs of the sweep: K x L, plus (K_for_L, L) for every L of --L_sweep."""
  pairs = [(int(k), int(l)) for k in _K.value for l in _L.value]
  pairs += [(_K_FOR_L.value, int(l)) for l in _L_SWEEP.value]
  return list(dict.fromkeys(pairs))


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 1000)
  common.check_int('L', _L.value, 2 if _CROSS.value else 1)
  common.check_int('n', _N.value, 1)
  common.check_int('trials', _TRIALS.value, 1)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  common.check_choice('prompts', _PROMPTS.value, ['uniform', 'two_group'])
  if _L_SWEEP.value:
    common.check_int('L_sweep', _L_SWEEP.value, 2 if _CROSS.value else 1)
    common.check_int('K_for_L', _K_FOR_L.value, 2, 1000)
  common.check_int('mc_samples', _MC.value, 1000)
  n_max = max(int(v) for v in _N.value)
  for K, L in settings():
    # Prompts, counts, grouped counts and a few temporaries of one (K, L) setting, float32.
    need = 4 * _TRIALS.value * max(n_max, _MC.value) * (L + 6 * K)
    common.check_memory('K', K, need)
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


@functools.lru_cache(maxsize=None)
@functools.lru_cache(maxsize=None)
def _uniform_stage(L, n_max, mc_samples):
  """jit(lax.map over trials) of every trial's randomness: its weight key and the uniforms of
  its data and Monte-Carlo sets. Independent of K: one compilation serves the whole K sweep.

  lax.map, not vmap: each trial is already vectorised over samples, and vmapping threefry over
  a batch of keys makes XLA compile ~5x longer on CPU for no run-time gain.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling  # pylint: disable=import-outside-toplevel

  def uniform_trials(keys):
    def one(key):
      w_key, data_key, mc_key = jax.random.split(key, 3)
      return (w_key, sampling.dataset_uniforms(data_key, n_max, L),
              sampling.dataset_uniforms(mc_key, mc_samples, L))
    return jax.lax.map(one, keys)

  return jax.jit(uniform_trials)


@functools.lru_cache(maxsize=None)
def _dataset_stage(K, L, scale, cross, prompts):
  """jit(lax.map over trials) of ``A*``, data and Monte-Carlo sets from the uniforms."""
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling  # pylint: disable=import-outside-toplevel
  prompt_fn = sampling.PROMPTS[prompts](K, L)

  def sample_trials(uniforms):
    def one(u):
      w_key, data_u, mc_u = u
      A = sampling.sample_scores(w_key, K, scale)
      return (A, sampling.dataset_from_uniforms(A, *data_u, prompt_fn, cross),
              sampling.dataset_from_uniforms(A, *mc_u, prompt_fn, cross))
    return jax.lax.map(one, uniforms)

  return jax.jit(sample_trials)


def _compiled(K, L, n_max, mc_samples, scale, cross, prompts):
  """Data generation of one (K, L) setting: keys (trials, 2) -> (A*, data, mc), stacked over
  trials; the same numbers as ``sampling.sample_dataset`` per trial."""
  uniforms = _uniform_stage(L, n_max, mc_samples)
  datasets = _dataset_stage(K, L, scale, cross, prompts)
  return lambda keys: datasets(uniforms(keys))


@functools.lru_cache(maxsize=None)
def _group(K, capacity):
  """jit(vmap over trials) of sorting each trial's samples by query, once for every n."""
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel
  def group_trials(data):
    return fit.group_by_query(data, K, capacity)

  return jax.jit(jax.vmap(group_trials))


@functools.lru_cache(maxsize=None)
def _fit_cell(ridge):
  """jit(vmap over trials) of fit + errors at a traced n: one compilation per (K, capacity)."""
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel

  def cell(grouped, A, n, slots):
    res = fit.fit_grouped(fit.restrict(grouped, n), ridge=ridge, slots=slots)
    return fit.p_error(res.A_hat, A), fit.centered_w_error(res.A_hat, A), res.iters

  trials = jax.vmap(cell, in_axes=(0, 0, None, None))
  # One chunk-loop trip count for every trial: the bound is taken over the whole batch.
  def fit_cell(grouped, A, n):
    return trials(grouped, A, n, fit.used_slots(grouped, n))

  return jax.jit(fit_cell)


@functools.lru_cache(maxsize=None)
def _theory(K, capacity):
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import theory  # pylint: disable=import-outside-toplevel
  def theory_trials(A, mc):
    return theory.predicted_error(A, mc, K, capacity, 1.0)

  return jax.jit(jax.vmap(theory_trials))


def trial_keys(seed, K, L, trials):
  """Key of trial i of setting (K, L): fold_in(fold_in(fold_in(seed, K), L), i)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  root = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), K), L)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(trials))


def run_experiment(results):
  """Run every (K, L, n) cell not yet in ``results``, writing after each one."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel
  ns = sorted({int(v) for v in _N.value})
  trials, start = _TRIALS.value, time.time()
  cells = [(K, L, n) for K, L in settings() for n in ns]
  done = 0
  todo = {(K, L): [n for n in ns if not results.done({'K': K, 'L': L, 'n': n})]
          for K, L in settings()}
  pending = [(K, L) for K, L in settings() if todo[K, L]]

  def generate(K, L):
    """Dispatch (asynchronously) the data generation of one setting."""
    gen = _compiled(K, L, max(ns), _MC.value, _SCALE.value, _CROSS.value, _PROMPTS.value)
    return gen(trial_keys(flags.FLAGS.seed, K, L, trials))

  # One setting of look-ahead: the next setting's data are generated (JAX dispatch is
  # asynchronous) while this one's stages are traced, compiled and fitted.
  upcoming = generate(*pending[0]) if pending else None
  for K, L in settings():
    if not todo[K, L]:
      done += len(ns)
      continue
    A, data, mc = upcoming
    pending.pop(0)
    upcoming = generate(*pending[0]) if pending else None
    capacity = fit.round_capacity(fit.row_capacity(data.query, K), 1024)
    mc_capacity = fit.round_capacity(fit.row_capacity(mc.query, K), 1024)
    unit_error = _theory(K, mc_capacity)(A, mc)  # predicted error at n = 1
    grouped, dropped = _group(K, capacity)(data)
    del data, mc
    assert not np.asarray(dropped).any(), 'row capacity too small'  # by construction
    unit_error = np.asarray(unit_error)
    for n in ns:
      done += 1
      if n not in todo[K, L]:
        continue
      err, err_w, iters = map(np.asarray, _fit_cell(_RIDGE.value)(grouped, A, n))
      results.add(pd.DataFrame({
          'K': K, 'L': L, 'n': n, 'trial': np.arange(trials), 'seed': flags.FLAGS.seed,
          'cross': int(_CROSS.value), 'prompts': _PROMPTS.value,
          'error': err, 'error_W': err_w, 'predicted_error': unit_error / n,
          'newton_iters': iters}))
      common.progress(f'{NAME}: K={K} L={L} n={n} ({done}/{len(cells)}) '
                      f'mean error {err.mean():.3g}', start)


def slopes(df):
  """Least-squares slope of log(mean error) vs log(n), per (K, L)."""
  out = {}
  for (K, L), g in df.groupby(['K', 'L']):
    m = g.groupby('n')['error'].mean()
    if len(m) >= 2:
      out[(K, L)] = float(np.polyfit(np.log(m.index.values), np.log(m.values), 1)[0])
  return out


def plot(csv_path):
  """Figure from the CSV only: error vs n per K (with theory and c K^2/n), the K^2-normalised
  panel, and the L sweep when present."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  df = io.read_csv(csv_path, required=KEYS + ['error', 'predicted_error'],
                   numeric=KEYS + ['error', 'predicted_error'])
  if df.empty:
    raise io.ResultsError(f'{csv_path} has no rows')
  slope = slopes(df)
  L0 = int(df['L'].mode().iloc[0])
  main = df[df['L'] == L0]
  Ks = sorted(main['K'].unique())
  # The L-sweep panel: the K with several prompt lengths (read from the CSV, not the flags).
  multi = [K for K, g in df.groupby('K') if g['L'].nunique() > 1]
  K_L = int(multi[0]) if multi else None
  Ls = sorted(df[df['K'] == K_L]['L'].unique()) if multi else []
  ncols = 3 if Ls else 2
  fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2))
  c = float(np.median(main['error'] * main['n'] / main['K'] ** 2))
  colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(Ks), 1)))
  for color, K in zip(colors, Ks):
    g = main[main['K'] == K].groupby('n')
    mean, std = g['error'].mean(), g['error'].std().fillna(0)
    n = mean.index.values
    ax = axes[0]
    ax.plot(n, mean, 'o-', color=color, label=f'K={K}: slope {slope.get((K, L0), np.nan):.2f}')
    ax.fill_between(n, np.maximum(mean - std, mean * 1e-2), mean + std, color=color, alpha=0.2)
    ax.plot(n, g['predicted_error'].mean(), '--', color=color, lw=1)
    ax.plot(n, c * K ** 2 / n, ':', color='gray', lw=1)
    norm = mean * n / K ** 2
    axes[1].plot(n, norm, 'o-', color=color, label=f'K={K}')
    axes[1].plot(n, g['predicted_error'].mean() * n / K ** 2, '--', color=color, lw=1)
  axes[0].plot([], [], 'k--', lw=1, label='MLE asymptotics')
  axes[0].plot([], [], ':', color='gray', label=f'{c:.2g} K²/n')
  axes[0].set(xscale='log', yscale='log', xlabel='n (IID prompts)',
              ylabel='‖P̂ − P*‖²_F', title=f'Sample complexity (L={L0}, mean ± std)')
  axes[1].set(xscale='log', yscale='log', xlabel='n', ylabel='error · n / K²',
              title='K²-normalised: curves collapse')
  for L, color in zip(Ls, plt.cm.plasma(np.linspace(0, 0.85, max(len(Ls), 1)))):
    g = df[(df['K'] == K_L) & (df['L'] == L)].groupby('n')
    axes[2].plot(g['error'].mean().index, g['error'].mean(), 'o-', color=color,
                 label=f'L={L}: slope {slope.get((K_L, L), np.nan):.2f}')
    axes[2].plot(g['error'].mean().index, g['predicted_error'].mean(), '--', color=color, lw=1)
  if Ls:
    axes[2].set(xscale='log', yscale='log', xlabel='n', ylabel='‖P̂ − P*‖²_F',
                title=f'Prompt length (K={K_L})')
  for ax in axes:
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return common.save_figure(fig, NAME)


def main(_):
  common.run_and_plot(
      NAME, KEYS, FLAG_NAMES, validate, run_experiment, plot,
      lambda frame: {'slopes': {f'K={k},L={l}': s for (k, l), s in slopes(frame).items()}})


if __name__ == '__main__':
  common.run(main, quick=apply_quick)
