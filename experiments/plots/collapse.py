"""Distribution collapse (paper Fig. 5 middle and right), from the CSVs only: per variant the
running frequencies of the example trajectory, 10-token windows of it, and the seed sweep's
final top-1 / top-2 shares with their uniform baselines 1/K and 2/K."""
from __future__ import annotations

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import collapse as trials
from experiments.plots import style

KEYS = ['variant', 'seed', 't', 'token']
SEED_KEYS = ['variant', 'seed']
TITLES = {'random': 'random P', 'zero_diag': 'same P, zero diagonal'}


def read(csv_path, seeds_path):
  """The example trajectories and the seed sweep, checked (one-line io.ResultsError)."""
  df = io.read_csv(csv_path, required=KEYS, nonnegative_int=['seed', 'token'],
                   positive_int=['t'], probability=['frequency', 'emitted'], nonempty=True,
                   unique=KEYS)
  sw = io.read_csv(seeds_path, required=SEED_KEYS, nonnegative_int=['seed'],
                   positive_int=['K'], probability=['top1', 'top2'], nonempty=True,
                   unique=SEED_KEYS)
  variants = [v for v in trials.VARIANTS if v in set(df['variant'])]
  if not variants:
    raise io.ResultsError(f'{csv_path} has no rows of a known variant '
                          f'({", ".join(trials.VARIANTS)})')
  return df, sw, variants


def windows(tokens, T, count):
  """Start times (1-indexed, log-spaced) and the 10-token windows of ``tokens`` from them."""
  starts = np.unique(np.geomspace(1, max(T - 10, 1), count).astype(int))
  grid = np.array([tokens[s - 1:s + 9] for s in starts if s + 9 <= len(tokens)])
  return starts[:len(grid)], grid


def plot(csv_path, seeds_path, snapshots=6):
  """The figure: one row per variant (frequencies, windows, seed-sweep shares)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  df, sw, variants = read(csv_path, seeds_path)
  K = int(df['token'].max()) + 1
  stats = trials.sweep_summary(sw) if len(sw) else {}
  cmap = style.pyplot().cm.tab10 if K <= 10 else style.pyplot().cm.tab20
  fig, axes = style.subplots(len(variants), 3, figsize=(15, 3.8 * len(variants)), squeeze=False,
                             gridspec_kw={'width_ratios': [1.4, 1, 1]})
  for row, variant in zip(axes, variants):
    d = df[df['variant'] == variant]
    T, seed = int(d['t'].max()), int(d['seed'].iloc[0])
    for k in range(K):
      dk = d[d['token'] == k]
      row[0].plot(dk['t'], dk['frequency'], color=cmap(k), label=f'token {k + 1}')
    top1 = d[d['t'] == T]['frequency'].max()
    row[0].set(xscale='log', ylim=(0, 1), xlabel='t (generated tokens)',
               ylabel='frequency in context',
               title=f'{TITLES[variant]}, seed {seed}: final top-1 share {top1:.2f}')
    row[0].legend(ncol=3, loc='upper left')
    seq = d[d['emitted'] == 1].sort_values('t')['token'].to_numpy()
    starts, grid = windows(seq, T, snapshots)
    if grid.size:
      row[1].imshow(grid, cmap=matplotlib.colors.ListedColormap([cmap(k) for k in range(K)]),
                    vmin=-0.5, vmax=K - 0.5, aspect='auto')
      for (i, j), v in np.ndenumerate(grid):
        row[1].text(j, i, str(v + 1), ha='center', va='center', fontsize=8)
      row[1].set(yticks=range(len(grid)), yticklabels=[f'i={s}' for s in starts],
                 xticks=range(10), xticklabels=[f'+{j}' for j in range(10)],
                 title='10-token windows from time i (1-indexed tokens)')
    s = sw[sw['variant'] == variant]
    bins = np.linspace(0, 1, 41)
    for col, color, base in (('top1', 'tab:red', 1), ('top2', 'tab:blue', 2)):
      row[2].hist(s[col], bins=bins, color=color, alpha=0.45, histtype='stepfilled',
                  label=f'{col[:3]}-{base} share')
      row[2].axvline(base / K, color=color, ls=':', lw=1.5,
                     label=f'{col[:3]}-{base} if uniform ({base}/K)')
    row[2].set(xlim=(0, 1), xlabel='final share of the context', ylabel='seeds',
               title=f'{len(s)} seeds: mean top-1 {s["top1"].mean():.2f}, '
                     f'top-2 {s["top2"].mean():.2f}')
    row[2].legend(loc='upper left')
  ref = 'random' if 'random' in stats else next(iter(stats), None)
  seeds = sorted(set(df['seed'].astype(int)))
  rule = f'\nExample trajectories: seed {", ".join(map(str, seeds))}'
  if ref is not None and seeds == [stats[ref]['median_seed']]:
    rule = (f'\nExample trajectories: the seed whose final top-1 share ({TITLES[ref]}) is the '
            f'median of the {len(sw[sw["variant"] == ref])}-seed sweep (seed {seeds[0]}); '
            'every row uses that seed (same A).')
  fig.suptitle(f'Distribution collapse, K={K}, T={T} (paper Fig. 5){rule}')
  fig.tight_layout()
  return fig
