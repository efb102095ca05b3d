"""Collapse statistics over seeds, from the CSV only: rows winners / top-1 share / collapse
time, one column per sweep (K, L0, scale); lines are means over seeds, bands the project's
convention (``style.BAND``) clipped to each quantity's range."""
from __future__ import annotations

import math

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import collapse_statistics as trials
from experiments.plots import style

KEYS = ['sweep', 'K', 'L0', 'scale', 'variant', 'seed']
METRICS = ['winners', 'top1', 'top2', 'collapse_time', 'max_final_freq']
COLORS = {'random': 'tab:red', 'zero_diag': 'tab:blue'}
LABELS = {'random': 'random P', 'zero_diag': 'same P, zero diagonal'}
FIXED = {'K': 'L0 = K, scale 1', 'L0': 'K = {K}, scale 1', 'scale': 'K = L0 = {K}'}
XLABELS = {'K': 'K (vocabulary size)', 'L0': 'L0 (initial prompt length)',
           'scale': 'scale of A ~ N(0, scale²)'}


def read(csv_path):
  """The table, checked (one-line io.ResultsError)."""
  num = ['K', 'L0', 'scale', 'seed', 'T'] + METRICS
  df = io.read_csv(csv_path, required=KEYS + METRICS, numeric=num,
                   positive_int=['K', 'L0', 'T', 'collapse_time'],
                   nonnegative_int=['seed', 'winners'],
                   nonnegative=['scale'], nonempty=True, unique=KEYS,
                   probability=['top1', 'top2', 'max_final_freq', 'winner_threshold'])
  sweeps = [s for s in trials.SWEEPS if s in set(df['sweep'])]
  if not sweeps:
    raise io.ResultsError(f'{csv_path} has no rows of a known sweep ({", ".join(trials.SWEEPS)})')
  return df, sweeps


def plot(csv_path):
  """The figure (3 rows x one column per sweep) with one legend below it."""
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  df, sweeps = read(csv_path)
  T, thr = int(df['T'].max()), float(df['winner_threshold'].iloc[0])
  fig, axes = style.subplots(3, len(sweeps), figsize=(5 * len(sweeps), 11), squeeze=False)
  for col, sweep in enumerate(sweeps):
    d = df[df['sweep'] == sweep]
    K_max = int(d['K'].max())
    for variant in trials.VARIANTS:
      v = d[d['variant'] == variant]
      if not len(v):
        continue
      kw = dict(color=COLORS[variant], label=f'{LABELS[variant]}: mean')
      style.mean_band(axes[0, col], v, sweep, 'winners', lo=0, hi=K_max, **kw)
      style.mean_band(axes[1, col], v, sweep, 'top1', lo=0, hi=1, **kw)
      style.mean_band(axes[2, col], v, sweep, 'collapse_time', lo=1, hi=T, log=True, **kw)
      top = v.groupby(sweep)['top1'].max()
      axes[1, col].plot(top.index, top.values, 'v:' if variant == 'random' else '^:',
                        color=COLORS[variant], lw=1, label=f'{LABELS[variant]}: max')
    n = d.groupby([sweep, 'variant']).size().min()
    title = f'{sweep} sweep ({FIXED[sweep].format(K=int(d["K"].iloc[0]))}), {n} seeds, T={T}'
    axes[0, col].set(ylabel=f'winners (final frequency > {thr:g})', title=title)
    axes[1, col].axhline(0.5, color='k', ls='--', lw=1, label='1/2')
    axes[1, col].axhline(0.5 + 3 / math.sqrt(T), color='gray', ls=':', lw=1,
                         label='1/2 + 3/√T')
    axes[1, col].set(ylabel='top-1 share of the final context', ylim=(0, 1.02))
    axes[2, col].set(ylabel='collapse time t', yscale='log', ylim=(1, T * 1.5),
                     xlabel=XLABELS[sweep])
    x = np.array(sorted(set(d[sweep])), float)
    for ax in axes[:, col]:
      ax.set_xscale('log', base=2)
      ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
      ax.set_xticks(x)
      ax.grid(True, which='both', alpha=0.3)
  handles, labels = axes[1, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', ncol=3, bbox_to_anchor=(0.5, 0.0))
  fig.suptitle(f'Collapse statistics over seeds (lines: mean; bands: {style.BAND}, clipped to '
               f'the range). Winner: final frequency > {thr:g}.\nCollapse time: first t after '
               f'which the set of tokens above {thr:g} stays the final winner set '
               f'(≈ {T}: not settled).', fontsize=10)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  return fig
