"""Positional encoding (paper Def. 2.4 / Lemma 2.5) from the positional_encoding CSVs only."""
from __future__ import annotations

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import positional_encoding as trials
from experiments.plots import attention_equivalence
from experiments.plots import style

KEYS = ['K', 'L', 'cross', 'n', 'trial', 'metric']
WEIGHT_KEYS = ['K', 'L', 'cross', 'n', 'trial', 'position']
EQ_KEYS = ['K', 'L', 'cross', 'route', 'trial']
NAMES = {'P_error': r'$\|\hat P - P^*\|_F^2$',
         'w_error': r'$\|\hat w/\Sigma\hat w - w^*/\Sigma w^*\|_2^2$'}
ROUTE_LABELS = {'embedding': 'generic embeddings → positional_ccmc_next_token_probs',
                'embedding_log': 'generic embeddings → positional_log_probs',
                'bias': 'learnable bias b (embed_position_bias) → positional_log_probs'}


def _equivalence(ax, eq, tol):
  """(a) worst |difference| per cell and route."""
  worst, triples, per_cell = trials.eq_summary(eq)
  cells = per_cell[['K', 'L', 'cross']].drop_duplicates().reset_index(drop=True)
  x = np.arange(len(cells))
  width = 0.8 / len(trials.ROUTES)
  floor = np.finfo(np.float32).eps / 16  # exact zeros drawn at the axis floor
  colors = dict(zip(trials.ROUTES, ('tab:blue', 'tab:cyan', 'tab:orange')))
  for r, route in enumerate(trials.ROUTES):
    vals = cells.merge(per_cell[per_cell['route'] == route], on=['K', 'L', 'cross'],
                       how='left')['max_abs_diff'].to_numpy()
    ax.bar(x + (r - (len(trials.ROUTES) - 1) / 2) * width, np.maximum(np.nan_to_num(vals), floor),
           width, color=colors[route], label=ROUTE_LABELS[route])
  ax.axhline(tol, color='tab:red', ls='--', label=f'tolerance {tol:g}')
  ax.axhline(np.finfo(np.float32).eps, color='gray', ls=':', label='float32 eps')
  ax.set(yscale='log', xticks=x, ylim=(floor / 2, tol * 300),
         ylabel='max |attention − positional CCMC| per cell',
         title=f'(a) attention with positions = positional CCMC\nmax |diff| {worst:.1e} '
               f'over ≥ {triples:,} (W, positions, X) per cell and route')
  ax.set_xticklabels([f'K={k} L={l} {"cross" if c else "self"}'
                      for k, l, c in cells.itertuples(index=False)], fontsize=7, rotation=60,
                     ha='right')
  ax.legend(fontsize=7, loc='upper left')


def plot(csv_path, weights_path, eq_path):
  """Equivalence per cell, error vs n, recovered position weights. Returns the Figure."""
  df = io.read_csv(csv_path, required=KEYS, positive_int=['K', 'L', 'n'],
                   nonnegative_int=['cross', 'trial'], nonnegative=['error'], nonempty=True,
                   unique=KEYS)
  wdf = io.read_csv(weights_path, required=WEIGHT_KEYS, positive_int=['K', 'L', 'n'],
                    nonnegative_int=['cross', 'trial', 'position'],
                    probability=['w_true', 'w_hat'], nonempty=True, unique=WEIGHT_KEYS)
  # A NaN difference is the equivalence check's failure (reported by the run), not a bad file.
  eq = io.read_csv(eq_path, required=EQ_KEYS, positive_int=['K', 'L', 'prompts'],
                   nonnegative_int=['cross', 'trial'], nonnegative=['max_abs_diff'],
                   nan_ok=['max_abs_diff'], nonempty=True, unique=EQ_KEYS)
  fig, axes = style.subplots(1, 3, figsize=(18, 5.2), gridspec_kw={'width_ratios': [1.3, 1, 1]})
  _equivalence(axes[0], eq, attention_equivalence.tolerance(eq_path))

  # (b) error vs n, both gauge-invariant metrics.
  ax = axes[1]
  slope = trials.slopes(df)
  K, L = int(df['K'].iloc[0]), int(df['L'].iloc[0])
  cross = bool(df['cross'].iloc[0])
  for metric, color in zip(trials.METRICS, ('tab:blue', 'tab:green')):
    n, mean = style.mean_band(ax, df[df['metric'] == metric], 'n', 'error', color, log=True,
                              label=style.slope_label(NAMES[metric], slope.get(metric)))
    ax.plot(n, mean[-1] * n[-1] / n, ':', color=color, lw=1)
  ax.plot([], [], ':', color='gray', label='∝ 1/n')
  ax.set(xscale='log', yscale='log', xlabel='n (IID prompts)', ylabel='squared error',
         title=f'(b) joint MLE of (A, b): K={K}, L={L}, {"cross" if cross else "self"}-attention,'
               f'\n{style.BAND} ({df["trial"].nunique()} trials)')
  ax.text(0.02, 0.02, 'Gauge: the global scale of w (b → b + c) and a shift of\neach row of A '
          'are not identifiable; the metrics compare\nP = softmax(A) and w / Σw = softmax(b).',
          transform=ax.transAxes, fontsize=7.5, va='bottom',
          bbox=dict(boxstyle='round', fc='white', ec='0.8'))
  ax.legend(fontsize=8, loc='upper right')

  # (c) recovered normalised weights, trial 0, smallest and largest n.
  ax = axes[2]
  w0 = wdf[wdf['trial'] == wdf['trial'].min()]
  ns = sorted(w0['n'].unique())
  pos = np.arange(w0['position'].nunique())
  shown = [(None, 'true w*/Σw*', 'k')] + [(ns[0], None, 'tab:orange'), (ns[-1], None, 'tab:green')]
  bw = 0.8 / len(shown)
  for s, (n, label, color) in enumerate(shown):
    if n is None:
      vals = w0[w0['n'] == ns[-1]].sort_values('position')['w_true'].to_numpy()
    else:
      vals = w0[w0['n'] == n].sort_values('position')['w_hat'].to_numpy()
      label = f'estimate, n = {n:,}'
    ax.bar(pos + (s - 1) * bw, vals, bw, color=color, label=label,
           alpha=0.85 if n is None else 0.75)
  ax.set(xticks=pos, xticklabels=[str(i + 1) for i in pos], xlabel='position i (1-indexed; '
         f'{L} = query{", not a key" if cross else ""})', ylabel='normalised weight w_i / Σw',
         title='(c) position weights, trial 0')
  ax.legend(fontsize=8)
  for a in axes[1:]:
    a.grid(True, which='both', alpha=0.3)
  fig.suptitle('Positional encoding (paper Def. 2.4 / Lemma 2.5): '
               r'$\pi^X_k \propto P[x_L, k]\,\sum_{i: x_i = k} w_i$; tokens 0-indexed in code '
               'and CSV, positions 0-indexed in the CSV')
  fig.tight_layout()
  return fig
