"""Training the attention layer, from results/attention_training.csv and its curves CSV only:
(a) error vs n of the convex MLE and the trained tied layer (paper Fig. 4 with the paper's own
model trained); (b) training curves from every init (trial 0, largest n, one K): the tied runs
meet at the MLE's objective, the untied ones spread; (c) held-out NLL vs n of the untied layer,
the tied layer and the true CCMC (the entropy floor)."""
from __future__ import annotations

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import attention_training as trials
from experiments.plots import style

KEYS = ['K', 'L', 'n', 'trial', 'model', 'init']
CURVE_KEYS = ['K', 'L', 'n', 'model', 'init', 'step']
ERROR = r'$\|\hat P - P^*\|_F^2$'
STYLE = {'convex_mle': ('k', 'o-', 'convex MLE (Newton)'),
         'tied_adam': ('tab:blue', 's--', 'tied layer, Adam'),
         'tied_lbfgs': ('tab:green', '^:', 'tied layer, L-BFGS'),
         'untied_adam': ('tab:red', 'v-', 'untied layer, Adam')}
FLOOR = 1e-9  # excess objective below this is drawn at it (float32 resolution ~1e-7)


def read(csv_path, curves_path):
  """Both tables, checked (one-line io.ResultsError)."""
  df = io.read_csv(csv_path, required=KEYS + ['train_nll', 'heldout_nll', 'heldout_nll_true'],
                   positive_int=['K', 'L', 'n'], nonnegative_int=['trial', 'init'],
                   nonnegative=['error'], nan_ok=['error'],
                   finite=['train_nll', 'heldout_nll', 'heldout_nll_true'], nonempty=True,
                   unique=KEYS)
  cv = io.read_csv(curves_path, required=CURVE_KEYS + ['excess'], positive_int=['K', 'L', 'n'],
                   nonnegative_int=['init', 'step'], finite=['excess'], nonempty=True,
                   unique=CURVE_KEYS)
  unknown = set(df['model']) - set(trials.MODELS)
  if unknown or 'convex_mle' not in set(df['model']):
    raise io.ResultsError(f'{csv_path}: models must be {", ".join(trials.MODELS)} with '
                          f'convex_mle present; got {", ".join(sorted(set(df["model"])))}')
  return df, cv


def plot(csv_path, curves_path):
  """The three panels; returns the Figure."""
  plt = style.pyplot()
  df, cv = read(csv_path, curves_path)
  L0 = int(df['L'].mode().iloc[0])
  df, cv = df[df['L'] == L0], cv[cv['L'] == L0]
  Ks = sorted(df['K'].unique())
  fig, axes = plt.subplots(1, 3, figsize=(16.5, 4.6))
  colors = dict(zip(Ks, plt.cm.viridis(np.linspace(0, 0.85, max(len(Ks), 1)))))
  ax = axes[0]
  for K in Ks:
    for model, marker in (('convex_mle', 'o-'), ('tied_adam', 's--'), ('tied_lbfgs', '^:')):
      g = df[(df['K'] == K) & (df['model'] == model)]
      if g.empty:
        continue
      if model == 'convex_mle':
        style.mean_band(ax, g, 'n', 'error', colors[K], log=True, fmt=marker,
                        label=f'K={K}, convex MLE')
      else:
        m = g.groupby('n')['error'].mean()
        ax.plot(m.index, m.values, marker, color=colors[K], mfc='none', ms=9,
                label=f'K={K}, {STYLE[model][2]}')
  ax.set(xscale='log', yscale='log', xlabel='n (IID prompts)', ylabel=ERROR,
         title=f'(a) error vs n, L={L0}: MLE ({style.BAND})\nand the trained tied layer (mean)')
  ax.legend(fontsize=6.5, ncol=1)
  # (b) the curves of the K nearest 10 at its largest n
  Kb = min(cv['K'].unique(), key=lambda k: abs(k - 10))
  cb = cv[cv['K'] == Kb]
  nb = cb['n'].max()
  cb = cb[cb['n'] == nb]
  ax = axes[1]
  for model in trials.TRAINED:
    color, _, label = STYLE[model]
    for init, g in cb[cb['model'] == model].groupby('init'):
      ax.plot(g['step'] + 1, np.maximum(g['excess'], FLOOR), color=color, lw=1, alpha=0.8,
              label=label if init == 0 else None)
  ax.axhline(1e-5, color='gray', ls=':', lw=1, label='1e-5 nats')
  ax.set(xscale='log', yscale='log', xlabel='optimizer step + 1',
         ylabel='objective − convex MLE objective (nats)',
         title=f'(b) training curves, every init (trial 0, K={Kb}, n={nb})\n'
               f'tied runs meet at the MLE; untied runs spread')
  ax.legend(fontsize=7)
  ax = axes[2]
  for K in Ks:
    for model, ls in (('tied_lbfgs', '-'), ('untied_adam', '--')):
      g = df[(df['K'] == K) & (df['model'] == model)]
      m = g.groupby('n')['heldout_nll'].mean()
      ax.plot(m.index, m.values, 'o' + ls, color=colors[K], ms=4,
              label=f'K={K}, {STYLE[model][2].split(",")[0]}')
    floor = df[(df['K'] == K) & (df['model'] == 'convex_mle')].groupby('n')[
        'heldout_nll_true'].mean()
    ax.plot(floor.index, floor.values, ':', color=colors[K], lw=2,
            label=f'K={K}, true CCMC (entropy floor)')
  ax.set(xscale='log', xlabel='n (IID prompts)', ylabel='held-out NLL (nats, mean over trials)',
         title='(c) held-out NLL: untied vs tied layer vs the truth')
  ax.legend(fontsize=6.5, ncol=1)
  for ax in axes:
    ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  return fig
