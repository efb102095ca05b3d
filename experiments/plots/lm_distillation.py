"""Figure of the distillation experiment (the CCMC learnt from an LM's answers), from its CSV."""
from __future__ import annotations

from ccmc_jax import io
from experiments.plots import real_text as rt

STYLE = {'lm_answers': ('tab:purple', 'CCMC fitted to the LM\'s answers'),
         'real_text': ('k', 'CCMC fitted to the real text')}


def read(csv):
  frame = io.read_csv(csv, required=['source'], positive_int=['n', 'n_heldout_copy'],
                      nonnegative_int=['n_copy'],
                      nonnegative=['heldout_nll_lm', 'kl_lm_copy', 'heldout_nll_text',
                                   'floor_nll'], nonempty=True)
  if not set(frame['source']) & set(STYLE):
    raise io.ResultsError(f'{csv} has no row of a known source ({", ".join(STYLE)})')
  return frame


def draw(csv):
  """Held-out NLL of fresh LM answers (with the LM's own floor), the KL from the LM's
  renormalised copy law, and the NLL of the real held-out answers, each vs n."""
  plt = rt.pyplot()
  frame = read(csv)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
  panels = (('heldout_nll_lm', 'NLL per copy event (nats)', 'Fresh LM answers, held-out prompts'),
            ('kl_lm_copy', 'KL(LM renormalised copy law || CCMC) (nats)',
             'Distance to the LM\'s copy law'),
            ('heldout_nll_text', 'NLL per copy event (nats)', 'Real held-out answers'))
  for ax, (col, ylabel, title) in zip(axes, panels):
    for source, (color, label) in STYLE.items():
      d = frame[frame['source'] == source].sort_values('n')
      if len(d):
        ax.plot(d['n'], d[col], 'o-', color=color, label=label)
    if col == 'heldout_nll_lm':
      ax.axhline(frame['floor_nll'].iloc[0], color='tab:purple', ls=':',
                 label='the LM itself (renormalised)')
    ax.set(xscale='log', xlabel='n prompts queried (training blocks)', ylabel=ylabel,
           title=title)
    ax.legend(fontsize=8)
  setting = ', '.join(f'{k}={frame[k].iloc[0]}' for k in ('corpus', 'K', 'L') if k in frame)
  fig.suptitle(f'Learning the CCMC from a language model\'s answers ({setting}; '
               f'{int(frame["n_heldout_copy"].iloc[0]):,} held-out copy events)', fontsize=11)
  fig.tight_layout()
  return fig
