"""The trained language model's loss curves, from the CSV only: training loss (mean batch loss
since the previous evaluation) and validation NLL per token against the step, with the bigram
chain's and the unigram's validation NLL on the same tokens as reference lines."""
from __future__ import annotations

from ccmc_jax import io
from experiments.plots import style

NLL = ['train_loss', 'validation_nll', 'bigram_nll', 'unigram_nll']


def read(csv_path):
  """The table, checked (one-line io.ResultsError)."""
  return io.read_csv(csv_path, required=['step'] + NLL + ['tokens_per_s'],
                     nonnegative_int=['step'], nonnegative=NLL + ['tokens_per_s'],
                     nonempty=True, unique=['step'])


def plot(csv_path):
  """One panel: the two curves, the two reference lines, the final numbers in the title."""
  df = read(csv_path)
  fig, ax = style.subplots(1, 1, figsize=(7.5, 4.6))
  ax.plot(df['step'], df['train_loss'], 'o-', ms=3, color='tab:blue',
          label='training loss (batches since the last point)')
  ax.plot(df['step'], df['validation_nll'], 's-', ms=3, color='tab:red',
          label='validation NLL per token')
  last = df.iloc[-1]
  for col, color, name in (('bigram_nll', 'tab:green', 'bigram chain'),
                           ('unigram_nll', 'gray', 'unigram')):
    ax.axhline(last[col], ls='--', color=color, lw=1.2,
               label=f'{name} (validation): {last[col]:.3f}')
  trained = df[df['step'] > 0]
  rate = trained['tokens_per_s'].mean() if len(trained) else float('nan')
  top = max(df['validation_nll'].max(), df['train_loss'].max(), last['unigram_nll']) + 0.3
  ax.set(xlabel='training step', ylabel='nats per token',
         ylim=(min(df['validation_nll'].min(), df['train_loss'].min()) - 0.3, top),
         title=f'GPT-2-architecture LM trained here: validation NLL {last["validation_nll"]:.3f}'
               f' at step {int(last["step"])}\n(bigram {last["bigram_nll"]:.3f}; '
               f'{rate:,.0f} tokens/s)')
  ax.legend(loc='upper right', fontsize=8)
  return fig
