"""Figure of the LM-beside-the-CCMC experiment, drawn from its three CSVs only."""
from __future__ import annotations

from ccmc_jax import io
from experiments.plots import real_text as rt

SOURCES = ('lm_greedy', 'lm_sample', 'lm_sample_t0.7') + rt.SOURCES
COLORS = {'lm_greedy': 'tab:purple', 'lm_sample': 'tab:green', 'lm_sample_t0.7': 'tab:olive',
          **rt.COLORS}
LABELS = {'lm_greedy': 'LM, greedy', 'lm_sample': 'LM, temp. 1', 'lm_sample_t0.7': 'LM, temp. 0.7',
          **rt.LABELS}
NLL_BARS = (('all_tokens', 'lm', 'LM'), ('all_tokens', 'bigram_chain', 'bigram chain'),
            ('copy_events', 'lm', 'LM'), ('copy_events', 'lm_renormalised',
                                           'LM\nrenorm.'),
            ('copy_events', 'mle', 'CCMC,\nMLE P'), ('copy_events', 'bigram_P', 'CCMC,\nbigram P'),
            ('copy_events', 'uniform_P', 'CCMC,\nuniform P'))


def read(text_csv, curves_csv, nll_csv):
  """The three tables, checked for their columns and values."""
  metrics = ['seq_rep_4', 'distinct_1', 'distinct_2', 'top1_share', 'top5_share']
  rows = io.read_csv(text_csv, required=['source', 'first_words', 'prompt_end'],
                     nonnegative_int=['prompt'], probability=metrics, nonempty=True)
  curves = io.read_csv(curves_csv, required=['source'], positive_int=['t'],
                       probability=['top1_mean', 'top1_q10', 'top1_q90'], nonempty=True)
  nll = io.read_csv(nll_csv, required=['events', 'model'], nonnegative=['nll'],
                    positive_int=['count'], nonempty=True)
  for name, df, known in ((text_csv, rows, SOURCES), (curves_csv, curves, SOURCES)):
    if not set(df['source']) & set(known):
      raise io.ResultsError(f'{name} has no row of a known source ({", ".join(known)})')
  return rows, curves, nll


def draw(text_csv, curves_csv, nll_csv):
  """Running top-1 share vs t, seq-rep-4 per source, the NLL bars (per token and per copy
  event), and the first generated words after one prompt."""
  plt = rt.pyplot()
  rows, curves, nll = read(text_csv, curves_csv, nll_csv)
  sources = [s for s in SOURCES if s in set(rows['source'])]
  setting = ', '.join(f'{k}={rows[k].iloc[0]}' for k in ('corpus', 'K', 'L', 'T') if k in rows)
  fig = plt.figure(figsize=(17, 9))
  grid = fig.add_gridspec(2, 3, height_ratios=[1, 0.6])
  ax_curve, ax_rep, ax_nll = (fig.add_subplot(grid[0, i]) for i in range(3))
  rt.draw_curves(ax_curve, curves, sources, COLORS, LABELS, rows['prompt'].nunique())
  rt.draw_repetition(ax_rep, rows, sources, COLORS, LABELS, fontsize=7)

  bars = [(e, m, label) for e, m, label in NLL_BARS
          if ((nll['events'] == e) & (nll['model'] == m)).any()]
  values = [float(nll.loc[(nll['events'] == e) & (nll['model'] == m), 'nll'].iloc[0])
            for e, m, _ in bars]
  colors = ['tab:purple' if m.startswith('lm') else 'tab:red' if m == 'mle' else 'tab:gray'
            for _, m, _ in bars]
  drawn = ax_nll.bar(range(len(bars)), values, color=colors, alpha=0.7)
  for b, v in zip(drawn, values):
    ax_nll.annotate(f'{v:.3f}', (b.get_x() + b.get_width() / 2, v), xytext=(0, 3),
                    textcoords='offset points', ha='center', fontsize=8)
  split = sum(e == 'all_tokens' for e, _, _ in bars)
  ax_nll.axvline(split - 0.5, color='k', lw=0.8)
  ax_nll.set_xticks(range(len(bars)), [label for _, _, label in bars], fontsize=7)
  counts = {e: int(nll.loc[nll['events'] == e, 'count'].iloc[0]) for e in set(nll['events'])}
  ax_nll.set(ylabel='held-out NLL (nats)',
             title=f'Left: per token ({counts.get("all_tokens", 0):,} tokens); right: per '
                   f'copy event\n({counts.get("copy_events", 0):,} held-out events)')

  ax_text = fig.add_subplot(grid[1, :])
  rt.draw_sample_text(ax_text, rows, sources, LABELS, text_csv, width=175)
  fig.suptitle(f'A trained language model beside the CCMC (1-layer self-attention) on real '
               f'text ({setting}; beyond its context the LM sees its last n_positions tokens)',
               fontsize=11)
  fig.tight_layout()
  return fig

