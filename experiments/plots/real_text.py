"""Figure of the real-text experiment, drawn from its three CSVs only."""
from __future__ import annotations

import textwrap

from ccmc_jax import io

SOURCES = ('ccmc', 'ccmc_window', 'bigram', 'corpus')
MODELS = ('mle', 'uniform_P', 'bigram_P')
COLORS = {'ccmc': 'tab:red', 'ccmc_window': 'tab:orange', 'bigram': 'tab:blue',
          'corpus': 'k'}
LABELS = {'ccmc': 'CCMC, growing context', 'ccmc_window': 'CCMC, window of L',
          'bigram': 'bigram Markov chain', 'corpus': 'real continuation'}
MODEL_LABELS = {'mle': 'CCMC, MLE P', 'uniform_P': 'CCMC, uniform P\n(π = m/L)',
                'bigram_P': 'CCMC, bigram P'}


def read(text_csv, fit_csv, curves_csv):
  """The three tables, checked for their columns."""
  metrics = ['seq_rep_4', 'distinct_1', 'distinct_2', 'top1_share', 'top5_share']
  rows = io.read_csv(text_csv, required=['source', 'first_words', 'prompt_end'],
                     nonnegative_int=['prompt'], probability=metrics, nonempty=True)
  fit = io.read_csv(fit_csv, required=['model'], positive_int=['n_train', 'n_heldout'],
                    nonnegative=['heldout_nll', 'ridge'], probability=['copy_fraction'],
                    nan_ok=['ridge'], nonempty=True)
  curves = io.read_csv(curves_csv, required=['source'], positive_int=['t'],
                       probability=['top1_mean', 'top1_q10', 'top1_q90'], nonempty=True)
  for name, df, col, known in ((text_csv, rows, 'source', SOURCES),
                               (fit_csv, fit, 'model', MODELS),
                               (curves_csv, curves, 'source', SOURCES)):
    if not set(df[col]) & set(known):
      raise io.ResultsError(f'{name} has no row of a known {col} ({", ".join(known)})')
  return rows, fit, curves


def pyplot():
  """matplotlib.pyplot on the Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def draw_curves(ax, curves, sources, colors, labels, n_prompts):
  """Running top-1 share vs t per source: mean and the 10-90 % band over prompts."""
  for s in sources:
    c = curves[curves['source'] == s].sort_values('t')
    ax.plot(c['t'], c['top1_mean'], color=colors[s], label=labels[s])
    ax.fill_between(c['t'], c['top1_q10'], c['top1_q90'], color=colors[s], alpha=0.15)
  ax.set(xscale='log', ylim=(0, 1), xlabel='generated tokens t',
         ylabel='top-1 share of tokens 1..t',
         title=f'Running top-1 share: mean over {n_prompts} prompts,\n'
               'band = 10th-90th percentile')
  ax.legend(fontsize=8)


def draw_repetition(ax, rows, sources, colors, labels, fontsize=8):
  """Box plot of seq-rep-4 per source, the mean as a diamond."""
  data = [rows.loc[rows['source'] == s, 'seq_rep_4'].values for s in sources]
  parts = ax.boxplot(data, widths=0.6, patch_artist=True, showfliers=False)
  for patch, s in zip(parts['boxes'], sources):
    patch.set(facecolor=colors[s], alpha=0.3)
  for i, (d, s) in enumerate(zip(data, sources)):
    ax.plot(i + 1, d.mean(), 'D', color=colors[s], ms=6)
    ax.annotate(f'{d.mean():.3f}', (i + 1, d.mean()), xytext=(8, 0),
                textcoords='offset points', fontsize=8, va='center')
  ax.set_xticks(range(1, len(sources) + 1), [labels[s].replace(', ', ',\n').replace(
      ' Markov', '\nMarkov').replace(' cont', '\ncont') for s in sources], fontsize=fontsize)
  ax.set(ylabel='seq-rep-4 = 1 - unique 4-grams / 4-grams', ylim=(0, 1),
         title='Repetition of T tokens per prompt\n(box: quartiles; diamond: mean)')


def draw_sample_text(ax, rows, sources, labels, text_csv, width=165):
  """The first generated words of every source after the first prompt they all share."""
  shared = set.intersection(*(set(rows.loc[rows['source'] == s, 'prompt']) for s in sources))
  if not shared:
    raise io.ResultsError(f'{text_csv}: no prompt has a row for every source '
                          f'({", ".join(sources)})')
  p0 = min(shared)
  sample = rows[rows['prompt'] == p0].drop_duplicates('source').set_index('source')
  lines = ['Prompt (last words): ... ' + str(sample['prompt_end'].iloc[0]), '']
  for s in sources:
    wrapped = textwrap.wrap(f'{labels[s]}: {sample.loc[s, "first_words"]}', width)
    lines += wrapped + ['']
  ax.axis('off')
  ax.text(0, 1, '\n'.join(lines), va='top', ha='left', family='monospace', fontsize=7.5,
          transform=ax.transAxes)
  ax.set_title(f'The first generated tokens after held-out prompt {p0} (<unk>: a word '
               'outside the K most frequent)', fontsize=9, loc='left')


def draw(text_csv, fit_csv, curves_csv):
  """Top-1 share vs t (mean, 10-90 % band over prompts), seq-rep-4 per source, held-out NLL
  per model, and the first generated words after one prompt."""
  plt = pyplot()
  rows, fit, curves = read(text_csv, fit_csv, curves_csv)
  sources = [s for s in SOURCES if s in set(rows['source'])]
  setting = ', '.join(f'{k}={rows[k].iloc[0]}' for k in ('corpus', 'K', 'L', 'T')
                      if k in rows)
  fig = plt.figure(figsize=(15, 8.5))
  grid = fig.add_gridspec(2, 3, height_ratios=[1, 0.55])
  ax_curve, ax_rep, ax_nll = (fig.add_subplot(grid[0, i]) for i in range(3))
  ax_text = fig.add_subplot(grid[1, :])
  draw_curves(ax_curve, curves, sources, COLORS, LABELS, rows['prompt'].nunique())
  draw_repetition(ax_rep, rows, sources, COLORS, LABELS)

  models = [m for m in MODELS if m in set(fit['model'])]
  f = fit.set_index('model').loc[models]
  bars = ax_nll.bar(range(len(models)), f['heldout_nll'],
                    color=['tab:red', 'tab:gray', 'tab:blue'][:len(models)], alpha=0.7)
  for b, v in zip(bars, f['heldout_nll']):
    ax_nll.annotate(f'{v:.3f}', (b.get_x() + b.get_width() / 2, v), xytext=(0, 3),
                    textcoords='offset points', ha='center', fontsize=9)
  ax_nll.set_xticks(range(len(models)), [MODEL_LABELS[m] for m in models], fontsize=8)
  r = f.loc['mle', 'ridge'] if 'mle' in models else float('nan')
  ax_nll.set(ylabel='held-out NLL per copy event (nats)',
             title=f'Held-out NLL on {int(f["n_heldout"].iloc[0]):,} copy events\n'
                   f'(copy fraction {f["copy_fraction"].iloc[0]:.3f}; '
                   f'{int(f["n_train"].iloc[0]):,} train; ridge {r:g})')

  draw_sample_text(ax_text, rows, sources, LABELS, text_csv)
  fig.suptitle(f'The CCMC (1-layer self-attention) fitted to real text ({setting})',
               fontsize=11)
  fig.tight_layout()
  return fig
