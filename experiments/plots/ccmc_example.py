"""The worked CCMC example (paper Fig. 1) from results/ccmc_example.csv only."""
from __future__ import annotations

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import ccmc_example as example
from experiments.plots import style


def read_quantities(path, names):
  """The example's quantities from a long-format CSV, checking that ``names`` are present."""
  df = io.read_csv(path, required=example.KEYS, nonnegative_int=['row', 'col'], finite=['value'],
                   unique=example.KEYS)
  try:
    q = example.from_columns(*(df[c].to_numpy() for c in example.KEYS + ['value']))
  except ValueError as e:
    raise io.ResultsError(f'{path}: {e}') from None
  missing = [n for n in names if n not in q]
  if missing:
    raise io.ResultsError(f'{path} lacks quantity(ies) {", ".join(missing)}')
  return q


def prompt_text(X):
  """The prompt 1-indexed, as in the paper: ``[1, 2, 1]``."""
  return f'[{", ".join(str(int(x) + 1) for x in X)}]'


def plot(csv_path):
  """The prompt and m(X), the weights W, the base chain P (query row boxed), and pi^X beside
  P[x_L] and m(X). Returns the Figure."""
  q = read_quantities(csv_path, example.CCMC_QUANTITIES)
  P, X, m, pi = q['P'], q['X'].astype(int), q['m'], q['pi']
  K, L, query = P.shape[0], len(X), int(q['query'][0])
  tokens = np.arange(K)
  labels = [str(k + 1) for k in tokens]
  fig, axes = style.subplots(1, 4, figsize=(17, 4.2),
                             gridspec_kw={'width_ratios': [1, 1, 1, 1.3]})

  prompt = prompt_text(X)
  ax = axes[0]
  ax.bar(tokens, q['m_freq'], color='tab:gray')
  for k in tokens:
    ax.text(k, q['m_freq'][k], f'{int(m[k])}/{L}', ha='center', va='bottom')
  ax.set(xticks=tokens, xticklabels=labels, ylim=(0, 1.12), xlabel='token j',
         ylabel=r'$m_j(X)\,/\,L$', title=f'context frequencies m(X), X = {prompt}')

  style.annotated_heatmap(axes[1], q['W'], r'attention weights $W$ (scores $A = W^\top$)',
                          cmap='RdBu_r', symmetric=True)
  axes[1].set(xlabel='column', ylabel='row')
  style.annotated_heatmap(axes[2], P, r'base chain $P = $ row-softmax$(W^\top)$, query row boxed',
                          highlight_row=query)
  axes[2].set(xlabel='next token j', ylabel='current token i')

  ax = axes[3]
  width = 0.27
  series = [(q['P_query'], rf'$P[{query + 1}, j]$ (chain only)', 'tab:blue'),
            (q['m_freq'], r'$m_j(X)/L$ (context only)', 'tab:gray'),
            (pi, r'$\pi^X_j \propto m_j(X)\,P[x_L, j]$', 'tab:red')]
  for s, (v, label, color) in enumerate(series):
    ax.bar(tokens + (s - 1) * width, v, width, label=label, color=color)
  for k in tokens:
    ax.text(k + width, pi[k], f'{pi[k]:.3f}', ha='center', va='bottom', fontsize=9,
            color='tab:red')
  ax.set(xticks=tokens, xticklabels=labels, ylim=(0, 1.12), xlabel='next token j',
         ylabel='probability', title=rf'next-token law $\pi^X$ (query $x_L$ = {query + 1})')
  ax.legend(fontsize=8, loc='upper right')
  fig.suptitle(f'CCMC example (paper Fig. 1): K = {K}, X = {prompt} (1-indexed as in the '
               f'paper and on every axis; [{", ".join(str(x) for x in X)}] 0-indexed in '
               f'code and CSV)')
  fig.tight_layout()
  return fig
