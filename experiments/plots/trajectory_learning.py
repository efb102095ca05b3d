"""Learning P from one trajectory vs from IID prompts, from the CSVs only: the error against T
(line: mean over trials; band: ``style.BAND``), the rows of P visited as a query, and the
per-row error against the row's visits at the largest T."""
from __future__ import annotations

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import trajectory_learning as trials
from experiments.plots import style

KEYS = ['source', 'K', 'L0', 'T', 'trial']
ROW_KEYS = KEYS + ['row']
COLORS = {'single': 'tab:red', 'iid': 'tab:blue'}
LABELS = {'single': 'one trajectory', 'iid': 'T IID prompts'}
ERROR = r'$\|\hat P - P^*\|_F^2$'


def read(csv_path, rows_path):
  """Both tables, checked (one-line io.ResultsError)."""
  num = ['K', 'L0', 'T', 'trial', 'error', 'visited_rows', 'min_visits']
  df = io.read_csv(csv_path, required=num + ['source'], positive_int=['K', 'L0', 'T'],
                   nonnegative_int=['trial', 'visited_rows', 'min_visits'],
                   nonnegative=['error'], nonempty=True, unique=KEYS)
  rw = io.read_csv(rows_path, required=ROW_KEYS, positive_int=['K', 'L0', 'T'],
                   nonnegative_int=['trial', 'row', 'visits'], nonnegative=['row_error'],
                   nonempty=True, unique=ROW_KEYS)
  if df.empty or not set(df['source']) & set(trials.SOURCES):
    raise io.ResultsError(f'{csv_path} has no rows of a known source '
                          f'({", ".join(trials.SOURCES)})')
  return df, rw


def rows_with_visits(rw, source, at_least):
  """Mean over trials of the number of rows of P with >= ``at_least`` visits, per T."""
  d = rw[rw['source'] == source]
  return (d['visits'] >= at_least).groupby([d['T'], d['trial']]).sum().groupby('T').mean()


def plot(csv_path, rows_path):
  """The figure (three panels); the title states the visited-rows numbers of the data."""
  df, rw = read(csv_path, rows_path)
  K, L0 = int(df['K'].iloc[0]), int(df['L0'].iloc[0])
  s = trials.summary(df)
  T_max = s['T_max']
  fig, axes = style.subplots(1, 3, figsize=(16, 4.6))
  for src in trials.SOURCES:
    d = df[df['source'] == src]
    if len(d):
      style.mean_band(axes[0], d, 'T', 'error', color=COLORS[src], log=True,
                      label=f'{LABELS[src]}: mean')
  iid = df[df['source'] == 'iid'].groupby('T')['error'].mean()
  if len(iid):
    T = iid.index.values
    axes[0].plot(T, iid.iloc[-1] * T[-1] / T, ':', color='gray', lw=1, label='∝ 1/T')
  axes[0].set(xscale='log', yscale='log', xlabel='T (trajectory length = number of IID prompts)',
              ylabel=ERROR, title=f'K={K}, L0={L0}: at T={T_max} single/iid = '
                                  f'{s["ratio_single_over_iid"]:.0f}x')
  axes[0].legend(loc='lower left')
  counts = {}
  for src in trials.SOURCES:
    for v, fmt in ((1, 'o-'), (10, 's--'), (100, '^:')):
      if src == 'iid' and v > 1:
        continue
      n_rows = rows_with_visits(rw, src, v)
      counts[src, v] = float(n_rows.get(T_max, np.nan))
      axes[1].plot(n_rows.index, n_rows.values, fmt, color=COLORS[src],
                   label=f'{LABELS[src]}: rows with >= {v} visit{"s" if v > 1 else ""}')
  axes[1].axhline(K, color='gray', ls=':', lw=1)
  axes[1].set(xscale='log', ylim=(0, K + 0.5), xlabel='T',
              ylabel=f'rows of P (of K={K}), mean over trials',
              title='Rows of P visited as a query')
  axes[1].legend(loc='lower right')
  last = rw[rw['T'] == rw['T'].max()]
  for src in trials.SOURCES:
    d = last[last['source'] == src]
    axes[2].scatter(np.maximum(d['visits'], 0.5), d['row_error'], s=10, alpha=0.5,
                    color=COLORS[src], label=LABELS[src])
  axes[2].set(xscale='log', yscale='log', xlabel='visits of the row as a query (0 drawn at 0.5)',
              ylabel=r'row error $\|\hat P[k] - P^*[k]\|^2$',
              title=f'Per-row error at T={int(rw["T"].max())} (every row, every trial)')
  axes[2].legend(loc='upper right')
  for ax in axes:
    ax.grid(True, which='both', alpha=0.3)
  fig.suptitle(
      f'Learning P from one trajectory vs from T IID prompts. By T={T_max} the trajectory '
      f'visits {counts.get(("single", 1), np.nan):.1f} of {K} rows, but only '
      f'{counts.get(("single", 100), np.nan):.1f} get >= 100 visits (IID: every row ~T/K);\n'
      f'the collapse starves the other rows, so its error falls far slower than 1/T. '
      f'Lines: mean over trials; bands: {style.BAND}.', fontsize=10)
  fig.tight_layout()
  return fig
