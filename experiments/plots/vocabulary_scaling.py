"""Vocabulary-scaling figure from results/vocabulary_scaling.csv only."""
from __future__ import annotations

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import vocabulary_scaling as trials
from experiments.plots import style

KEYS = ['K', 'n', 'trial']
COLUMNS = ['K', 'L', 'n', 'n_over_K2', 'trial', 'error', 'predicted_error']
ERROR = r'$\|\hat P - P^*\|_F^2$'


def plot(csv_path):
  """(a) error·n/K² vs K, one curve per n/K² with the theory overlay and the fitted exponent b
  in the legend; (b) mean error ÷ mean predicted error vs K. Returns the Figure."""
  plt = style.pyplot()
  df = io.read_csv(csv_path, required=COLUMNS, numeric=COLUMNS, positive_int=['K', 'L', 'n'],
                   nonnegative=['error', 'predicted_error'], nonempty=True,
                   unique=KEYS)
  df = df.assign(normalised=df['error'] * df['n'] / df['K'] ** 2,
                 predicted_normalised=df['predicted_error'] * df['n'] / df['K'] ** 2)
  b = trials.exponents(df)
  L = ', '.join(str(v) for v in sorted(df['L'].unique()))
  ratios = sorted(df['n_over_K2'].unique())
  fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4))
  colors = plt.cm.viridis(np.linspace(0, 0.75, max(len(ratios), 1)))
  for color, r in zip(colors, ratios):
    g = df[df['n_over_K2'] == r]
    b_text = f'{b[float(r)]:.2f}' if float(r) in b else 'n/a'
    Ks, _ = style.mean_band(axes[0], g, 'K', 'normalised', color, lo=0,
                            label=f'n/K²={r:g}: b = {b_text}')
    axes[0].plot(Ks, g.groupby('K')['predicted_normalised'].mean(), '--', color=color, lw=1.2)
    m = g.groupby('K')[['error', 'predicted_error']].mean()
    axes[1].plot(m.index, m['error'] / m['predicted_error'], 'o-', color=color,
                 label=f'n/K²={r:g}')
  axes[0].plot([], [], 'k--', lw=1.2, label='MLE asymptotics (Fisher information)')
  axes[0].set(xscale='log', xlabel='K (vocabulary size)', ylim=(0, None),
              ylabel=ERROR + r'$\cdot\, n / K^2$',
              title=f'(a) L={L}: flat in K ⇔ error ∝ K²/n; {style.BAND}\n'
                    'b: least-squares exponent of mean(error)·n ∝ K^b (paper: b = 2)')
  lo, hi = trials.RATIO_RANGE
  axes[1].axhspan(lo, hi, color='gray', alpha=0.12, lw=0, label=f'[{lo}, {hi}]')
  axes[1].axhline(1.0, color='k', lw=0.8)
  axes[1].set(xscale='log', xlabel='K (vocabulary size)',
              ylabel='mean error ÷ mean predicted error',
              title='(b) measured vs asymptotic prediction')
  for ax in axes:
    Ks = sorted(df['K'].unique())
    ax.set_xticks(Ks, [str(int(K)) for K in Ks])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)
    ax.legend()
  fig.tight_layout()
  return fig
