"""Attention = CCMC (paper Fig. 2) from the attention_equivalence CSVs only."""
from __future__ import annotations

import os

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import attention_equivalence as trials
from ccmc_jax.trials import ccmc_example as example
from experiments.plots import ccmc_example as example_plots
from experiments.plots import style

KEYS = ['K', 'L', 'cross', 'trial']
POINT_KEYS = KEYS + ['token']
METRICS = ['max_abs_diff', 'mean_abs_diff', 'max_sum_error', 'count']
DEFAULT_TOL = 1e-5


def _bar_labels(ax, x, values, fmt='{:.2f}', **kw):
  for xi, v in zip(x, values):
    ax.text(xi, v, fmt.format(v), ha='center', va='bottom' if v >= 0 else 'top', fontsize=8,
            **kw)


def tolerance(csv_path):
  """The --tol of the run, from the CSV's sidecar (DEFAULT_TOL without one)."""
  meta = io.read_meta(os.path.splitext(csv_path)[0] + '.meta.json') or {}
  return float(meta.get('tol', meta.get('flags', {}).get('tol', DEFAULT_TOL)))


def plot(csv_path, points_path, example_path):
  """Attention route (top), CCMC route (bottom), numerical check (right). Returns the Figure."""
  plt = style.pyplot()
  df = io.read_csv(csv_path, required=KEYS, positive_int=['K', 'L', 'prompts'],
                   nonnegative_int=['cross', 'trial', 'count'],
                   nonnegative=[m for m in METRICS if m != 'count'], nonempty=True,
                   unique=KEYS)
  pts = io.read_csv(points_path, required=POINT_KEYS, positive_int=['K', 'L'],
                    nonnegative_int=['cross', 'trial', 'token'], probability=['attention', 'ccmc'],
                    unique=POINT_KEYS)
  tol = tolerance(csv_path)
  q = example_plots.read_quantities(example_path, tuple(example.QUANTITIES))
  P, X, m = q['P'], q['X'].astype(int), q['m']
  K3, L3, query = P.shape[0], len(X), int(q['query'][0])
  tokens, positions = np.arange(K3), np.arange(L3)
  tok_labels = [str(k + 1) for k in tokens]
  colors = plt.cm.tab10(np.arange(10))
  prompt = example_plots.prompt_text(X)

  fig, axes = plt.subplots(2, 4, figsize=(20, 8.6), gridspec_kw={'width_ratios': [1, 1, 1, 1.25]})
  # Attention route (top row): positions -> softmax over positions -> mass per token.
  pos_labels = [f'i={i + 1}\nx={x + 1}' for i, x in enumerate(X)]
  ax = axes[0, 0]
  ax.bar(positions, q['att_scores'], color=[colors[x] for x in X])
  _bar_labels(ax, positions, q['att_scores'])
  ax.axhline(0, color='k', lw=0.6)
  ax.set(xticks=positions, xticklabels=pos_labels, ylabel=r'$e_{x_i}^\top W e_{x_L}$',
         title=f'(a) attention scores over positions, X = {prompt}')
  ax = axes[0, 1]
  ax.bar(positions, q['att_weights'], color=[colors[x] for x in X])
  _bar_labels(ax, positions, q['att_weights'], '{:.3f}')
  ax.set(xticks=positions, xticklabels=pos_labels, ylim=(0, 1.12), ylabel=r'$s_i$',
         title='(b) softmax over positions')
  ax = axes[0, 2]
  bottom = np.zeros(K3)
  for i, x in enumerate(X):  # stack each position's weight on its token: the sum over i
    ax.bar(x, q['att_weights'][i], bottom=bottom[x], color=colors[x], edgecolor='white', lw=2)
    ax.text(x, bottom[x] + q['att_weights'][i] / 2, f'$s_{i + 1}$', ha='center', va='center',
            fontsize=9, color='white')
    bottom[x] += q['att_weights'][i]
  ax.plot(tokens, q['pi'], '_', color='k', ms=40, mew=2.5)
  # A short proxy line: the wide '_' marker itself would cover the legend text.
  ax.plot([], [], '-', color='k', lw=2.5, label=r'CCMC $\pi^X_k$ (panels f-g)')
  for k in tokens:
    ax.text(k, q['att_output'][k] + 0.04, f"o = {q['att_output'][k]:.4f}\n"
            f"π = {q['pi'][k]:.4f}", ha='center', va='bottom', fontsize=8)
  ax.set(xticks=tokens, xticklabels=tok_labels, ylim=(0, 1.12), xlabel='token k',
         ylabel='$o_k$ = sum of $s_i$ over positions with $x_i = k$',
         title='(c) attention output: mass per token')
  ax.legend(fontsize=8, loc='upper right', handlelength=1.5)

  # CCMC route (bottom row): the query row of P, masked by the counts, normalised.
  style.annotated_heatmap(axes[1, 0], P, f'(d) base chain P = row-softmax($W^\\top$), '
                          f'query row {query + 1} boxed', highlight_row=query)
  axes[1, 0].set(xlabel='next token j', ylabel='current token i')
  ax = axes[1, 1]
  ax.bar(tokens, m, color=[colors[k] for k in tokens])
  _bar_labels(ax, tokens, m, '{:.0f}')
  ax.set(xticks=tokens, xticklabels=tok_labels, ylim=(0, max(m.max(), 1) * 1.15),
         xlabel='token j', ylabel=r'$m_j(X)$', title='(e) counts m(X): the mask')
  ax = axes[1, 2]
  w = 0.27
  for s, (v, label, color) in enumerate([
      (q['P_query'], rf'$P[{query + 1}, j]$', 'tab:blue'),
      (q['mP'], rf'$m_j(X)\,P[{query + 1}, j]$ (masked)', 'tab:gray'),
      (q['pi'], r'$\pi^X_j$ = normalised', 'tab:red')]):
    ax.bar(tokens + (s - 1) * w, v, w, label=label, color=color)
    _bar_labels(ax, tokens + (s - 1) * w, v, '{:.3f}', rotation=90)
  ax.set(xticks=tokens, xticklabels=tok_labels, ylim=(0, max(1.0, q['mP'].max()) * 1.3),
         xlabel='next token j', ylabel='value', title='(f-g) mask the query row, normalise')
  ax.legend(fontsize=8, loc='upper right')

  # Numerical check (right column).
  worst, pairs, per_cell = trials.summary(df)
  ax = axes[0, 3]
  Ks = sorted(pts['K'].unique())
  for color, K in zip(plt.cm.viridis(np.linspace(0, 0.85, max(len(Ks), 1))), Ks):
    for cross, marker in ((0, 'o'), (1, '^')):
      p = pts[(pts['K'] == K) & (pts['cross'] == cross)]
      if len(p):
        ax.scatter(p['ccmc'], p['attention'], s=10, marker=marker, color=color, alpha=0.6,
                   label=f'K={K} {"cross" if cross else "self"}')
  ax.plot([0, 1], [0, 1], 'k-', lw=0.6)
  ax.set(xlabel=r'CCMC $\pi^X_k$ (ccmc_next_token_probs)',
         ylabel=r'attention $o_k$ (attention_next_token_probs)',
         title=f'{len(pts)} probabilities on the diagonal\nmax |diff| over {pairs:,} '
               f'(W, X) pairs: {worst:.1e}')
  ax.legend(fontsize=7, ncol=2, loc='upper left')
  ax = axes[1, 3]
  labels = [f'K={K} L={L}\n{"cross" if c else "self"}' for K, L, c in
            per_cell[['K', 'L', 'cross']].itertuples(index=False)]
  x = np.arange(len(per_cell))
  floor = np.finfo(np.float32).eps / 16  # exact zeros (e.g. L = 1) drawn at the axis floor
  ax.bar(x, np.maximum(per_cell['max_abs_diff'], floor),
         color=['tab:orange' if c else 'tab:blue' for c in per_cell['cross']])
  for xi in x[per_cell['max_abs_diff'].to_numpy() == 0]:
    ax.text(xi, floor * 1.3, '0', ha='center', va='bottom', fontsize=8)
  ax.axhline(tol, color='tab:red', ls='--', label=f'tolerance {tol:g}')
  ax.axhline(np.finfo(np.float32).eps, color='gray', ls=':', label='float32 eps')
  ax.set(yscale='log', xticks=x, ylim=(floor / 2, tol * 20),
         ylabel='max |attention - CCMC| per cell',
         title=f'per cell (blue self, orange cross): {int(per_cell["pairs"].iloc[0]):,} pairs each')
  ax.set_xticklabels(labels, fontsize=6.5, rotation=90)
  ax.legend(fontsize=8)
  fig.suptitle(f'Attention = CCMC (paper Fig. 2): K = {K3}, X = {prompt} (tokens 1-indexed as in '
               f'the paper; 0-indexed in code and CSV). Top: attention route; bottom: CCMC '
               f'route; right: random W ~ N(0, σ²), uniform X')
  fig.tight_layout()
  return fig
