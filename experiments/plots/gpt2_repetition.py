"""GPT-2 greedy decoding collapsing into repetition (paper Fig. 5 left), from the CSV only:
the generation as a token grid coloured by whether the n-gram ending at each token occurred
earlier, and the running repetition fraction with the greedy token's probability."""
from __future__ import annotations

import json
import os
import textwrap

import numpy as np

from ccmc_jax import gpt2
from ccmc_jax import io
from experiments.plots import style

COLORS = {'prompt': '#d9d9d9', 'new': '#c6dbef', 'repeated': '#fcae91'}


def read_frame(path):
  """The experiment's CSV, checked (io.ResultsError, one line, if unusable)."""
  # step: 1..steps for generated tokens, <= 0 for the prompt's; NaN only for the prompt rows.
  frame = io.read_csv(path, required=gpt2.TABLE_COLUMNS, positive_int=['ngram'],
                      nonnegative_int=['token_id'], finite=['step'],
                      probability=['seen', 'repeated', 'repeated_fraction', 'p_greedy'],
                      nan_ok=['repeated_fraction', 'p_greedy'], nonempty=True)
  if not (frame['part'] == 'generated').any():
    raise io.ResultsError(f'{path} has no generated tokens')
  return frame


def _display(text: str, width: int) -> str:
  """A token's text for a grid cell: newline and tab as arrows, other control characters
  escaped (\\x06), surrounding spaces dropped, long texts cut."""
  text = text.replace('\n', '\u21b5').replace('\t', '\u21e5')
  text = ''.join(c if c.isprintable() else c.encode('unicode_escape').decode('ascii')
                 for c in text)
  if text.strip(' '):
    text = text.strip(' ')
  else:
    text = '\u2423' * min(len(text), 3)  # a token of spaces only
  return text if len(text) <= width else text[:width - 1] + '\u2026'


def _texts(frame):
  out = []
  for v in frame['token_text']:
    try:
      out.append(json.loads(v) if isinstance(v, str) else '')
    except json.JSONDecodeError:
      out.append(str(v))
  return out


def repetition_panel(ax, frame, columns: int = 10, max_rows: int = 24, chars: int = 8,
                     fontsize: float = 6.5, model: str = 'GPT-2'):
  """Paper Fig. 5 (left): the greedy generation as a token grid read left to right, top to
  bottom; prompt tokens grey, generated tokens red where the n-gram ending there already
  occurred earlier in the text (repetition), blue otherwise. With more than ``max_rows`` rows
  the first ``max_rows - 1`` rows and the last row are shown."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  frame = frame.sort_values('step', kind='stable').reset_index(drop=True)
  texts = _texts(frame)
  gen = (frame['part'] == 'generated').to_numpy()
  rep = frame['repeated'].to_numpy().astype(int) == 1
  code = np.where(~gen, 0, np.where(rep, 2, 1))
  n_rows = -(-len(frame) // columns)
  rows = list(range(n_rows))
  if n_rows > max_rows:
    rows = rows[:max_rows - 1] + [n_rows - 1]
  grid = np.full((len(rows), columns), -1)
  for r, row in enumerate(rows):
    chunk = code[row * columns:(row + 1) * columns]
    grid[r, :len(chunk)] = chunk
  cmap = matplotlib.colors.ListedColormap(
      ['white', COLORS['prompt'], COLORS['new'], COLORS['repeated']])
  ax.imshow(grid, cmap=cmap, vmin=-1.5, vmax=2.5, aspect='auto', interpolation='nearest')
  for r, row in enumerate(rows):
    for c in range(columns):
      i = row * columns + c
      if i < len(frame):
        ax.text(c, r, _display(texts[i], chars), ha='center', va='center', fontsize=fontsize,
                parse_math=False)
  ax.set_xticks(np.arange(columns + 1) - 0.5, minor=True)
  ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
  ax.grid(which='minor', color='white', linewidth=1.0)
  ax.tick_params(which='minor', length=0)
  first_step = frame['step'].to_numpy()
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels([str(int(first_step[row * columns])) for row in rows], fontsize=7)
  ax.set_xticks([])
  ax.set_ylabel('step of the row\'s first token (prompt <= 0)', fontsize=8)
  ids = frame['token_id'].to_numpy()[gen]
  frac = rep[gen].mean() if gen.any() else 0.0
  period, tail = gpt2.loop_period(ids.tolist())
  loop = ''
  if period and tail >= 8:
    loop = (f'; the last {tail} tokens repeat one token' if period == 1 else
            f'; the last {tail} tokens repeat a {period}-token cycle')
  title = (f'{model[:1].upper() + model[1:]}, greedy decoding: {frac:.0%} of the {gen.sum()} generated tokens end a '
           f'{int(frame["ngram"].iloc[0])}-gram seen before{loop}')
  ax.set_title('\n'.join(textwrap.wrap(title, 95)), fontsize=9)
  handles = [matplotlib.patches.Patch(color=COLORS[k], label=v) for k, v in
             (('prompt', 'prompt'), ('new', 'new n-gram'), ('repeated', 'repeated n-gram'))]
  ax.legend(handles=handles, loc='upper center', bbox_to_anchor=(0.5, -0.01), ncol=3,
            fontsize=7, frameon=False)
  return ax


def repetition_curve(ax, frame):
  """Running fraction of repeated n-grams and the greedy token's probability against the
  generation step (both rise as decoding locks into a loop)."""
  g = frame[frame['part'] == 'generated'].sort_values('step')
  ax.plot(g['step'], g['repeated_fraction'], color='tab:red', label='fraction of repeated n-grams')
  if g['p_greedy'].notna().any():
    ax.plot(g['step'], g['p_greedy'], color='tab:blue', lw=0.8, alpha=0.8,
            label='p(greedy token)')
  ax.set(ylim=(-0.02, 1.02), xlabel='generation step', ylabel='fraction / probability')
  ax.legend(loc='lower right')
  return ax


def plot(csv_path):
  """The figure from the CSV (and its sidecar's description of the model): the token grid and
  the running repetition curve."""
  frame = read_frame(csv_path)
  meta = io.read_meta(os.path.splitext(csv_path)[0] + '.meta.json') or {}
  model = meta.get('model') or 'GPT-2'  # the run's model in words (a sidecar without it: GPT-2)
  fig, (ax, ax2) = style.subplots(1, 2, figsize=(13, 6), gridspec_kw={'width_ratios': [1.6, 1]})
  repetition_panel(ax, frame, model=model)
  repetition_curve(ax2, frame)
  fig.suptitle('Paper Fig. 5 (left), our version: a trained transformer\'s greedy answer '
               'collapses into repetition')
  fig.tight_layout()
  return fig
