"""Sample-complexity figure (paper Figs. 4 and 6) from results/sample_complexity.csv only."""
from __future__ import annotations

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import sample_complexity as trials
from experiments.plots import style

KEYS = ['K', 'L', 'n', 'trial']
ERROR = r'$\|\hat P - P^*\|_F^2$'


def plot(csv_path):
  """Error vs n per K with the MLE asymptotics and c K²/n; the same curves times n / K²; and
  the prompt-length sweep when the CSV has several L for one K. Returns the Figure."""
  plt = style.pyplot()
  df = io.read_csv(csv_path, required=KEYS, positive_int=['K', 'L', 'n'],
                   nonnegative_int=['trial'], nonnegative=['error', 'predicted_error'],
                   nonempty=True, unique=KEYS)
  slope = trials.slopes(df)
  L0 = int(df['L'].mode().iloc[0])
  main = df[df['L'] == L0].assign(normalised=lambda d: d['error'] * d['n'] / d['K'] ** 2)
  Ks = sorted(main['K'].unique())
  # The L-sweep panel: the K with several prompt lengths (read from the CSV, not the flags).
  multi = [K for K, g in df.groupby('K') if g['L'].nunique() > 1]
  K_L = int(multi[0]) if multi else None
  Ls = sorted(df[df['K'] == K_L]['L'].unique()) if multi else []
  ncols = 3 if Ls else 2
  fig, axes = plt.subplots(1, ncols, figsize=(5.4 * ncols, 4.4))
  c = float(np.median(main['normalised']))
  colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(Ks), 1)))
  for color, K in zip(colors, Ks):
    g = main[main['K'] == K]
    n, _ = style.mean_band(axes[0], g, 'n', 'error', color, log=True,
                           label=style.slope_label(f'K={K}', slope.get((K, L0))))
    predicted = g.groupby('n')['predicted_error'].mean().to_numpy()
    axes[0].plot(n, predicted, '--', color=color, lw=1)
    axes[0].plot(n, c * K ** 2 / n, ':', color='gray', lw=1)
    style.mean_band(axes[1], g, 'n', 'normalised', color, label=f'K={K}')
    axes[1].plot(n, predicted * n / K ** 2, '--', color=color, lw=1)
  for ax in axes[:2]:
    ax.plot([], [], 'k--', lw=1, label='MLE asymptotics (Fisher information)')
  axes[0].plot([], [], ':', color='gray', label=f'{c:.2f} K²/n (median of error·n/K²)')
  axes[0].set(xscale='log', yscale='log', xlabel='n (IID prompts)', ylabel=ERROR,
              title=f'(a) sample complexity, L={L0}: {style.BAND}')
  spread = main.groupby(['K', 'n'])['normalised'].mean()
  axes[1].set(xscale='log', xlabel='n (IID prompts)', ylabel=ERROR + r'$\cdot\, n / K^2$',
              ylim=(0, 1.35 * axes[1].get_ylim()[1]),  # room for the legend above the bands
              title=f'(b) K²-normalised: means within {spread.min():.2g}–{spread.max():.2g} '
                    f'for every K, n\n(error ∝ K²/n up to this factor)')
  for color, L in zip(plt.cm.plasma(np.linspace(0, 0.85, max(len(Ls), 1))), Ls):
    g = df[(df['K'] == K_L) & (df['L'] == L)]
    n, _ = style.mean_band(axes[2], g, 'n', 'error', color, log=True,
                           label=style.slope_label(f'L={L}', slope.get((K_L, L))))
    axes[2].plot(n, g.groupby('n')['predicted_error'].mean(), '--', color=color, lw=1)
  if Ls:
    axes[2].plot([], [], 'k--', lw=1, label='MLE asymptotics (Fisher information)')
    axes[2].set(xscale='log', yscale='log', xlabel='n (IID prompts)', ylabel=ERROR,
                title=f'(c) prompt length, K={K_L}: {style.BAND}')
  for ax in axes:
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8, **({'loc': 'upper center', 'ncol': 2} if ax is axes[1] else {}))
  fig.tight_layout()
  return fig
