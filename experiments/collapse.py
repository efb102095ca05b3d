"""Distribution collapse along one trajectory (paper Sec. 4, Fig. 5 middle and right).

A trajectory starts from X_0 (a random permutation of all K tokens unless --X0 is given) and
appends x_{t+1} ~ pi^{X_t}. Variant `random`: P = softmax(A), A ~ N(0, scale^2); variant
`zero_diag`: the same P with its diagonal set to zero and rows renormalised. Outputs:

  results/collapse.csv        one trajectory per variant (seed --seed): variant, seed, t, token,
                              frequency (count / current length), emitted (x_t == token)
  results/collapse_seeds.csv  seed sweep: variant, seed, top1, top2 (final frequency shares),
                              winners (tokens above --winner_threshold)
  figures/collapse.{png,pdf}

The GPT-2 panel of paper Fig. 5 (left) is experiments.gpt2_repetition.

  python -m experiments.collapse --K=6 --T=5000 --seeds=200
"""
from __future__ import annotations

import functools
import os
import time

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_integer('K', 6, 'Vocabulary size K (paper Fig. 5 uses 6), >= 2.')
_T = flags.DEFINE_integer('T', 5000, 'Tokens generated per trajectory (time horizon), >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Scores A ~ N(0, scale^2) of the random P; > 0.')
_SEEDS = flags.DEFINE_integer('seeds', 200, 'Trajectories per variant in the seed sweep, >= 1.')
_VARIANTS = flags.DEFINE_list('variants', ['random', 'zero_diag'],
                              'Variants: random (P = softmax(A)), zero_diag (no self-loops).')
_X0 = flags.DEFINE_list('X0', [], 'Initial prompt, 0-indexed tokens (default: a random '
                        'permutation of all K tokens per seed).')
_WINDOW = flags.DEFINE_integer('window', 0, 'Context window L (0: growing context).')
_THRESH = flags.DEFINE_float('winner_threshold', 0.1,
                             'A winner token has final frequency above this, in (0, 1).')
_P_FILE = flags.DEFINE_string('P_file', None, 'Optional K x K row-stochastic P (.npy or .csv) '
                              'used for the plotted trajectories instead of a random one.')
_SNAPSHOTS = flags.DEFINE_integer('window_snapshots', 6, 'Number of 10-token windows drawn.')
NAME = 'collapse'
SEEDS_NAME = 'collapse_seeds'
KEYS = ['variant', 'seed', 't', 'token']
SEED_KEYS = ['variant', 'seed']
VARIANTS = ('random', 'zero_diag')
FLAG_NAMES = ['K', 'T', 'scale', 'seeds', 'variants', 'X0', 'window', 'winner_threshold',
              'P_file']


def apply_quick():
  for name, value in {'T': 500, 'seeds': 20}.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def load_P(path, K):
  """A user-given base chain: .npy or .csv, K x K, row-stochastic (one-line errors)."""
  from ccmc_jax import model  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise common.FlagError(f'--P_file={path} does not exist')
  try:
    P = np.load(path) if path.endswith('.npy') else np.loadtxt(path, delimiter=',', ndmin=2)
  except (ValueError, OSError) as e:
    raise common.FlagError(f'--P_file={path} is not a numeric matrix ({e})') from None
  try:
    P = model.check_stochastic(P, name=f'--P_file={path}')
  except ValueError as e:
    raise common.FlagError(str(e)) from None
  if P.shape[0] != K:
    raise common.FlagError(f'--P_file={path} is {P.shape[0]} x {P.shape[0]} but --K={K}')
  return P


def validate():
  common.check_int('K', _K.value, 2, 10000)
  common.check_int('T', _T.value, 1, 10 ** 7)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_int('seeds', _SEEDS.value, 1)
  common.check_choice('variants', _VARIANTS.value, VARIANTS)
  if not _VARIANTS.value:
    raise common.FlagError('--variants is empty: allowed values are random, zero_diag')
  if _X0.value:
    common.check_int('X0', _X0.value, 0, _K.value - 1)
  common.check_int('window', _WINDOW.value, 0)
  common.check_float('winner_threshold', _THRESH.value, 0, 1, lo_open=True)
  common.check_int('window_snapshots', _SNAPSHOTS.value, 1, 50)
  common.check_memory('T', _T.value, 4 * 2 * _T.value * _K.value * 3)
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return load_P(_P_FILE.value, _K.value) if _P_FILE.value else None


def variant_log_P(A, variant):
  """log P of a variant from scores A: log_softmax(A), or with -inf on the diagonal."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if variant == 'zero_diag':
    A = jnp.where(jnp.eye(A.shape[-1], dtype=bool), -jnp.inf, A)
  return jax.nn.log_softmax(A, axis=-1)


@functools.lru_cache(maxsize=None)
def _seed_runner(K, T, scale, variant, window, x0, trace):
  """jit(vmap over seeds) of one variant's trajectories; returns tokens and frequencies."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling, trajectory  # pylint: disable=import-outside-toplevel

  def run(key, log_P_given):
    w_key, x_key, t_key = jax.random.split(key, 3)
    A = sampling.sample_scores(w_key, K, scale)
    log_P = jnp.where(jnp.isnan(log_P_given), variant_log_P(A, variant), log_P_given)
    X0 = jnp.asarray(x0, jnp.int32) if x0 else jax.random.permutation(x_key, K).astype(jnp.int32)
    return trajectory.generate(t_key, log_P, X0, T, window=window or None, trace=trace)

  return jax.jit(jax.vmap(run, in_axes=(0, None)))


def seed_keys(seed, count):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  root = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(count))


def run_trajectories(results, P_given):
  """The plotted trajectories: one per variant, from seed --seed (or --P_file)."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  K, T = _K.value, _T.value
  for variant in _VARIANTS.value:
    if results.done({'variant': variant}):
      continue
    given = np.full((K, K), np.nan, np.float32)
    if P_given is not None:
      P = np.asarray(P_given, np.float64)
      if variant == 'zero_diag':
        P = P * (1 - np.eye(K))
        P = P / P.sum(1, keepdims=True)
      with np.errstate(divide='ignore'):
        given = np.log(P).astype(np.float32)
    runner = _seed_runner(K, T, _SCALE.value, variant, _WINDOW.value,
                          tuple(int(x) for x in _X0.value), True)
    traj = runner(seed_keys(flags.FLAGS.seed, 1), given)
    tokens, freqs = np.asarray(traj.tokens[0]), np.asarray(traj.freqs[0])
    t = np.repeat(np.arange(1, T + 1), K)
    token = np.tile(np.arange(K), T)
    results.add(pd.DataFrame({
        'variant': variant, 'seed': flags.FLAGS.seed, 't': t, 'token': token,
        'frequency': freqs.reshape(-1), 'emitted': (tokens[t - 1] == token).astype(int)}))


def run_seed_sweep(results):
  """Final top-1/top-2 shares and winner counts over --seeds trajectories per variant."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  K, T, start = _K.value, _T.value, __import__('time').time()
  for variant in _VARIANTS.value:
    if results.done({'variant': variant}):
      continue
    runner = _seed_runner(K, T, _SCALE.value, variant, _WINDOW.value,
                          tuple(int(x) for x in _X0.value), False)
    traj = runner(seed_keys(flags.FLAGS.seed, _SEEDS.value), np.full((K, K), np.nan, np.float32))
    final = np.sort(np.asarray(traj.freqs[:, 0]), axis=-1)[:, ::-1]
    results.add(pd.DataFrame({
        'variant': variant, 'seed': np.arange(_SEEDS.value),
        'root_seed': flags.FLAGS.seed, 'K': K, 'T': T, 'top1': final[:, 0],
        'top2': final[:, :2].sum(-1),
        'winners': (final > _THRESH.value).sum(-1)}))
    common.progress(f'{NAME}: {variant}: {_SEEDS.value} seeds, mean top-1 share '
                    f'{final[:, 0].mean():.3f}, top-2 {final[:, :2].sum(-1).mean():.3f}', start)


def plot(csv_path, seeds_path):
  """Fig. 5 middle (frequencies vs time) and right (10-token windows), plus the seed sweep."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  df = io.read_csv(csv_path, required=KEYS + ['frequency', 'emitted'],
                   numeric=['seed', 't', 'token', 'frequency', 'emitted'])
  sw = io.read_csv(seeds_path, required=SEED_KEYS + ['top1', 'top2', 'K'],
                   numeric=['seed', 'top1', 'top2', 'K'])
  variants = [v for v in VARIANTS if v in set(df['variant'])]
  if not variants:
    raise io.ResultsError(f'{csv_path} has no rows of a known variant ({", ".join(VARIANTS)})')
  K = int(df['token'].max()) + 1
  cmap = plt.cm.tab10 if K <= 10 else plt.cm.tab20
  fig, axes = plt.subplots(len(variants), 3, figsize=(15, 3.6 * len(variants)), squeeze=False,
                           gridspec_kw={'width_ratios': [1.4, 1, 1]})
  titles = {'random': 'random P', 'zero_diag': 'same P, zero diagonal'}
  for row, variant in zip(axes, variants):
    d = df[df['variant'] == variant]
    T = int(d['t'].max())
    for k in range(K):
      dk = d[d['token'] == k]
      row[0].plot(dk['t'], dk['frequency'], color=cmap(k), label=f'token {k + 1}')
    row[0].set(xscale='log', ylim=(0, 1), xlabel='t (generated tokens)',
               ylabel='frequency in context', title=f'{titles[variant]}: running frequencies')
    row[0].legend(fontsize=7, ncol=2)
    seq = d[d['emitted'] == 1].sort_values('t')['token'].to_numpy()
    starts = np.unique(np.geomspace(1, max(T - 10, 1), _SNAPSHOTS.value).astype(int))
    grid = np.array([seq[s - 1:s + 9] for s in starts if s + 9 <= len(seq)])
    if grid.size:
      row[1].imshow(grid, cmap=matplotlib.colors.ListedColormap([cmap(k) for k in range(K)]),
                    vmin=-0.5, vmax=K - 0.5, aspect='auto')
      for (i, j), v in np.ndenumerate(grid):
        row[1].text(j, i, str(v + 1), ha='center', va='center', fontsize=8)
      row[1].set(yticks=range(len(grid)), yticklabels=[f'i={s}' for s in starts[:len(grid)]],
                 xticks=range(10), xticklabels=[f'+{j}' for j in range(10)],
                 title='10-token windows from time i (1-indexed tokens)')
    s = sw[sw['variant'] == variant]
    row[2].hist([s['top1'], s['top2']], bins=np.linspace(0, 1, 21), label=['top-1', 'top-2'],
                color=['tab:red', 'tab:blue'], alpha=0.8)
    row[2].axvline(2 / K, color='gray', ls=':', label='2/K')
    row[2].set(xlabel='final share of the context', ylabel='seeds',
               title=f'{len(s)} seeds: mean top-1 {s["top1"].mean():.2f}, '
                     f'top-2 {s["top2"].mean():.2f}')
    row[2].legend(fontsize=8)
  fig.suptitle(f'Distribution collapse, K={K}, T={T} (paper Fig. 5)')
  fig.tight_layout()
  return common.save_figure(fig, NAME)


def main(_):
  csv, seeds_csv = common.csv_paths(NAME, SEEDS_NAME)
  if not flags.FLAGS.plot_only:
    P_given, flag_dict = common.start(validate, FLAG_NAMES)
    traj = common.Results(NAME, KEYS, flag_dict, flags.FLAGS.resume)
    sweep = common.Results(SEEDS_NAME, SEED_KEYS, flag_dict, flags.FLAGS.resume)
    run_trajectories(traj, P_given)
    run_seed_sweep(sweep)
    traj.finish()
    wall = sweep.finish()
    common.progress(f'{NAME}: wrote {traj.path} and {sweep.path} in {wall:.1f} s')
  paths = plot(csv, seeds_csv)
  common.progress(f'{NAME}: wrote {", ".join(paths)}')


if __name__ == '__main__':
  common.run(main, quick=apply_quick)
