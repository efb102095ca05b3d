"""Collapse statistics over many seeds (beyond the paper; paper Sec. 4, docs/theory.md Sec. 7).

One growing-context trajectory of T tokens per seed, x_{t+1} ~ pi^{X_t}, from X0 = a random
permutation of all K tokens followed by L0 - K uniform tokens (L0 < K: the first L0 tokens of
the permutation). Variant `random`: P = softmax(A), A ~ N(0, scale^2); variant `zero_diag`: the
same A with its diagonal set to -inf (no token follows itself). Seed i of a (K, L0) shape uses
fold_in(fold_in(fold_in(seed, K), L0), i) for every scale and both variants (common random
numbers: the variants share A, the scales share the standard normal draw).

Per seed, from the running frequencies f_t = counts / context length after step t = 1..T:
  winners       number of tokens whose final frequency f_T exceeds --winner_threshold;
  top1, top2    largest / sum of the two largest final frequencies;
  collapse_time the first t after which the set of tokens above --winner_threshold stays equal
                to the final (winner) set up to T (1 if it never changes; values near T mean
                the set had not settled within the horizon);
  max_final_freq = top1.

Three sweeps, each for every variant: `K` over --K (L0 = K, scale = 1), `L0` over --L0
(K = --K_base, scale = 1) and `scale` over --scale (K = L0 = --K_base). One compilation per
K: L0 (the prompt padded with -1), scale and variant are traced. With zero diagonal no token
can fill more than ceil(T/2) of the T generated positions, so its final frequency is at most
(its copies in X0 + ceil(T/2)) / (L0 + T); the sidecar records the largest zero-diagonal final
frequency against 1/2 + 3/sqrt(T) and against this exact bound.

Outputs: results/collapse_statistics.csv (sweep, K, L0, scale, variant, seed, winners, top1,
top2, collapse_time, max_final_freq, T, winner_threshold), figures/collapse_statistics.{png,pdf}.

  python -m experiments.collapse_statistics --K=4,8,16,32 --T=5000 --seeds=200
"""
from __future__ import annotations

import functools
import math
import time

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_list('K', ['4', '8', '16', '32'],
                       'Vocabulary sizes K of the K sweep (L0 = K, scale = 1), each >= 2.')
_L0 = flags.DEFINE_list('L0', ['4', '8', '32', '128'],
                        'Initial prompt lengths L0 of the L0 sweep (K = --K_base), each >= 2.')
_SCALE = flags.DEFINE_list('scale', ['0.25', '0.5', '1', '2', '4'],
                           'Score scales of the scale sweep, A ~ N(0, scale^2) (K = L0 = '
                           '--K_base); each in (0, 50].')
_K_BASE = flags.DEFINE_integer('K_base', 8, 'K of the L0 and scale sweeps (also their L0 in '
                               'the scale sweep), >= 2.')
_T = flags.DEFINE_integer('T', 5000, 'Tokens generated per trajectory (time horizon), >= 2.')
_SEEDS = flags.DEFINE_integer('seeds', 200, 'Trajectories per setting and variant, >= 1.')
_VARIANTS = flags.DEFINE_list('variants', ['random', 'zero_diag'],
                              'Variants: random (P = softmax(A)), zero_diag (no self-loops).')
_THRESH = flags.DEFINE_float(
    'winner_threshold', 0.1, 'A winner token has final frequency above this, in (0, 1). '
    'collapse_time = first t after which the set of tokens with running frequency above it '
    'stays equal to the final winner set.')
_BATCH = flags.DEFINE_integer('batch', 50, 'Seeds vectorised at once (memory: batch x T x K '
                              'running frequencies), >= 1.')

NAME = 'collapse_statistics'
SWEEPS = ('K', 'L0', 'scale')
VARIANTS = ('random', 'zero_diag')
KEYS = ['sweep', 'K', 'L0', 'scale', 'variant', 'seed']
METRICS = ['winners', 'top1', 'top2', 'collapse_time', 'max_final_freq']
FLAG_NAMES = ['K', 'L0', 'scale', 'K_base', 'T', 'seeds', 'variants', 'winner_threshold']


def apply_quick():
  """--quick: tiny settings for a smoke run (only flags the user did not set)."""
  quick = {'K': ['8'], 'L0': ['8', '32'], 'scale': ['0.5', '2'], 'T': 300, 'seeds': 16}
  for name, value in quick.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def settings():
  """The (sweep, K, L0, scale) cells, in sweep order."""
  base = _K_BASE.value
  cells = [('K', int(k), int(k), 1.0) for k in _K.value]
  cells += [('L0', base, int(l), 1.0) for l in _L0.value]
  cells += [('scale', base, base, float(s)) for s in _SCALE.value]
  return list(dict.fromkeys(cells))


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 1000)
  # L0 >= 2: X0 then holds two distinct tokens, so a zero-diagonal chain can always move.
  common.check_int('L0', _L0.value, 2, 10 ** 5)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  if not _SCALE.value:
    raise common.FlagError('--scale is empty: give at least one value')
  common.check_int('K_base', _K_BASE.value, 2, 1000)
  common.check_int('T', _T.value, 2, 10 ** 7)
  common.check_int('seeds', _SEEDS.value, 1, 10 ** 6)
  if not _VARIANTS.value:
    raise common.FlagError('--variants is empty: allowed values are random, zero_diag')
  common.check_choice('variants', _VARIANTS.value, VARIANTS)
  common.check_float('winner_threshold', _THRESH.value, 0, 1, lo_open=True)
  common.check_int('batch', _BATCH.value, 1)
  K_max = max([int(k) for k in _K.value] + [_K_BASE.value])
  common.check_memory('T', _T.value, 4 * 4 * min(_BATCH.value, _SEEDS.value) * _T.value * K_max)
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


@functools.lru_cache(maxsize=None)
def _runner(K, L0_pad, T, threshold, batch):
  """jit(lax.map in vmapped batches over seeds) of trajectory + summary, for one K.

  ``L0`` (<= ``L0_pad``, the prompt padded with -1), ``scale`` and ``zero_diag`` are traced,
  so every prompt length, scale and both variants share one compilation.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ccmc_jax import trajectory  # pylint: disable=import-outside-toplevel

  def run(key, L0, scale, zero_diag):
    w_key, x_key, t_key = jax.random.split(key, 3)
    A = scale * jax.random.normal(w_key, (K, K), jnp.float32)  # = sampling.sample_scores
    A = jnp.where(zero_diag & jnp.eye(K, dtype=bool), -jnp.inf, A)
    X0 = trajectory.initial_prompt(x_key, K, L0, L0_pad)
    traj = trajectory.generate(t_key, jax.nn.log_softmax(A, -1), X0, T)
    return trajectory.collapse_summary(traj.freqs, threshold)

  return jax.jit(lambda keys, L0, scale, zero_diag: jax.lax.map(
      lambda k: run(k, L0, scale, zero_diag), keys, batch_size=batch))


def seed_keys(seed, K, L0, count):
  """Key of seed i of shape (K, L0): fold_in(fold_in(fold_in(seed, K), L0), i)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  root = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), K), L0)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(count))


def run_experiment(results):
  """Every (sweep cell, variant) not yet in ``results``; a shared cell is computed once."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  T, seeds, start = _T.value, _SEEDS.value, time.time()
  cache = {}
  cells = [(c, v) for c in settings() for v in _VARIANTS.value]
  L0_pad = {}
  for _, K, L0, _ in settings():
    L0_pad[K] = max(L0, L0_pad.get(K, 0))
  for i, ((sweep, K, L0, scale), variant) in enumerate(cells):
    if results.done({'sweep': sweep, 'K': K, 'L0': L0, 'scale': scale, 'variant': variant}):
      continue
    if (K, L0, scale, variant) not in cache:
      runner = _runner(K, L0_pad[K], T, _THRESH.value, min(_BATCH.value, seeds))
      out = runner(seed_keys(flags.FLAGS.seed, K, L0, seeds), np.int32(L0), np.float32(scale),
                   variant == 'zero_diag')
      cache[K, L0, scale, variant] = {k: np.asarray(v) for k, v in out.items()}
    out = cache[K, L0, scale, variant]
    results.add(pd.DataFrame({
        'sweep': sweep, 'K': K, 'L0': L0, 'scale': scale, 'variant': variant,
        'seed': np.arange(seeds), 'root_seed': flags.FLAGS.seed, 'T': T,
        'winner_threshold': _THRESH.value,
        'winners': out['winners'], 'top1': out['top1'], 'top2': out['top2'],
        'collapse_time': out['collapse_time'], 'max_final_freq': out['top1']}))
    common.progress(f'{NAME}: {sweep} sweep K={K} L0={L0} scale={scale:g} {variant} '
                    f'({i + 1}/{len(cells)}): mean winners {out["winners"].mean():.2f}, '
                    f'top-1 {out["top1"].mean():.3f}, median collapse time '
                    f'{np.median(out["collapse_time"]):.0f}', start)


def zero_diag_bounds(L0, K, T):
  """Exact bound on a zero-diagonal token's final frequency: at most ceil(T/2) of the T
  generated tokens, plus its copies in X0 (at most 1 + max(0, L0 - K))."""
  return (1 + max(0, L0 - K) + math.ceil(T / 2)) / (L0 + T)


def summary(df):
  """The 'must show' numbers: the largest zero-diagonal final frequency vs 1/2 + slack."""
  out = {}
  T = int(df['T'].max())
  z = df[df['variant'] == 'zero_diag']
  if len(z):
    slack = 3 / math.sqrt(T)
    out['zero_diag_max_final_freq'] = float(z['max_final_freq'].max())
    out['half_plus_slack'] = 0.5 + slack
    out['slack_definition'] = '3/sqrt(T)'
    out['zero_diag_below_half_plus_slack'] = bool(z['max_final_freq'].max() <= 0.5 + slack)
    bound = z.apply(lambda r: zero_diag_bounds(r['L0'], r['K'], r['T']), axis=1)
    out['zero_diag_exact_bound_respected'] = bool((z['max_final_freq'] <= bound + 1e-6).all())
    out['zero_diag_min_winners'] = int(z['winners'].min())
  r = df[df['variant'] == 'random']
  if len(r):
    out['random_max_final_freq'] = float(r['max_final_freq'].max())
    out['random_fraction_top1_above_half'] = float((r['top1'] > 0.5).mean())
  return out


def plot(csv_path):
  """Figure from the CSV only: rows winners / top-1 share / collapse time, columns the sweeps."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  num = ['K', 'L0', 'scale', 'seed', 'T'] + METRICS
  df = io.read_csv(csv_path, required=KEYS + METRICS + ['T', 'winner_threshold'],
                   numeric=num + ['winner_threshold'])
  sweeps = [s for s in SWEEPS if s in set(df['sweep'])]
  if not sweeps:
    raise io.ResultsError(f'{csv_path} has no rows of a known sweep ({", ".join(SWEEPS)})')
  T, thr = int(df['T'].max()), float(df['winner_threshold'].iloc[0])
  colors = {'random': 'tab:red', 'zero_diag': 'tab:blue'}
  labels = {'random': 'random P', 'zero_diag': 'same P, zero diagonal'}
  fixed = {'K': 'L0 = K, scale 1', 'L0': 'K = {K}, scale 1', 'scale': 'K = L0 = {K}'}
  fig, axes = plt.subplots(3, len(sweeps), figsize=(5 * len(sweeps), 11), squeeze=False)
  for col, sweep in enumerate(sweeps):
    d = df[df['sweep'] == sweep]
    for variant in VARIANTS:
      g = d[d['variant'] == variant].groupby(sweep)
      if not len(g):
        continue
      x = np.array(sorted(g.groups), float)
      n = g.size().values
      for row, metric in enumerate(['winners', 'top1']):
        mean, sd = g[metric].mean(), g[metric].std().fillna(0)
        axes[row, col].errorbar(x, mean, yerr=sd, fmt='o-', capsize=3, color=colors[variant],
                                label=f'{labels[variant]} (mean ± sd)')
      axes[1, col].plot(x, g['top1'].max(), 'v:' if variant == 'random' else '^:',
                        color=colors[variant], lw=1, label=f'{labels[variant]} (max)')
      med = g['collapse_time'].median()
      axes[2, col].plot(x, med, 'o-', color=colors[variant], label=f'{labels[variant]} (median)')
      axes[2, col].fill_between(x, g['collapse_time'].quantile(0.25),
                                g['collapse_time'].quantile(0.75), color=colors[variant],
                                alpha=0.2)
    K = int(d['K'].iloc[0])
    title = f'{sweep} sweep ({fixed[sweep].format(K=K)}), {int(n[0])} seeds, T={T}'
    axes[0, col].set(ylabel=f'winners (final frequency > {thr:g})', title=title)
    axes[1, col].axhline(0.5, color='k', ls='--', lw=1, label='1/2')
    axes[1, col].axhline(0.5 + 3 / math.sqrt(T), color='gray', ls=':', lw=1,
                         label='1/2 + 3/√T')
    axes[1, col].set(ylabel='top-1 share of the final context', ylim=(0, 1.02))
    axes[2, col].set(ylabel='collapse time t (band: quartiles)', yscale='log',
                     ylim=(1, T * 1.5), xlabel={'K': 'K (vocabulary size)',
                                                'L0': 'L0 (initial prompt length)',
                                                'scale': 'scale of A ~ N(0, scale²)'}[sweep])
    for ax in axes[:, col]:
      ax.set_xscale('log', base=2)
      ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
      ax.set_xticks(x)
      ax.grid(True, which='both', alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle(f'Collapse statistics over seeds. Winner: final frequency > {thr:g}. '
               f'Collapse time: first t after which the set of tokens above {thr:g} stays the '
               f'final winner set (≈ {T}: not settled).', fontsize=10)
  fig.tight_layout()
  return common.save_figure(fig, NAME)


def main(_):
  common.run_and_plot(NAME, KEYS, FLAG_NAMES, validate, run_experiment, plot,
                      lambda frame: {'summary': summary(frame)})


if __name__ == '__main__':
  common.run(main, quick=apply_quick)
