"""The paper's worked CCMC example (paper Sec. 2, Fig. 1 / Definition 2.1 / Lemma 2.2).

K = 3 tokens and the prompt X = [1, 2, 1] in the paper's 1-indexed notation, which is
X = [0, 1, 0] in the 0-indexed tokens of the code and of the CSV (the default --X). From a fixed
attention matrix W (the default --W, or any K*K numbers) the library computes the token counts
m(X), the base chain P = softmax(A), A = W^T (E = I), and the next-token law
pi^X_j = m_j(X) P[x_L, j] / sum_l m_l(X) P[x_L, l]. Every number on the figure is read from

  results/ccmc_example.csv   long format: quantity, row, col, value (see QUANTITIES)
  figures/ccmc_example.{png,pdf}

  python -m experiments.ccmc_example --W=0.4,1,0.2,1.3,-0.5,0.9,0.3,0.8,-0.3 --X=0,1,0
"""
from __future__ import annotations

import math

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

# A = W^T has rows (0.4, 1.3, 0.3), (1.0, -0.5, 0.8), (0.2, 0.9, -0.3): from query token 1
# (paper indexing) the chain favours token 2, while the context holds token 1 twice, so pi^X
# visibly differs from both P[x_L] and m(X).
DEFAULT_W = ['0.4', '1.0', '0.2', '1.3', '-0.5', '0.9', '0.3', '0.8', '-0.3']
DEFAULT_X = ['0', '1', '0']

_W = flags.DEFINE_list('W', DEFAULT_W, 'Attention weights W (paper Sec. 2), K*K numbers in '
                       'row-major order; K = sqrt(count), 2 <= K <= 12. Scores A = W^T (E = I).')
_X = flags.DEFINE_list('X', DEFAULT_X, 'Prompt X = (x_1, ..., x_L), 0-indexed tokens in '
                       '[0, K-1]; the last one is the query x_L. The paper\'s Fig. 1 prompt '
                       '[1, 2, 1] (1-indexed) is 0,1,0.')

NAME = 'ccmc_example'
KEYS = ['quantity', 'row', 'col']
FLAG_NAMES = ['W', 'X']
MAX_K = 12  # an annotated K x K heat map stays legible up to here
# Quantities of the CSV. Matrices use (row, col) = (i, j); vectors use row 0 and col = index
# (token, or position for X and the per-position attention quantities); scalars row = col = 0.
QUANTITIES = {
    'W': 'attention weights W (K x K)',
    'A': 'scores A[i, j] = e_j^T W e_i (K x K)',
    'P': 'base chain P = softmax(A, -1) (K x K)',
    'X': 'prompt: col = position, value = 0-indexed token',
    'query': 'the query token x_L (0-indexed)',
    'm': 'token counts m(X) of the keys',
    'm_freq': 'token frequencies m(X) / L',
    'P_query': 'the query row P[x_L, :]',
    'mP': 'unnormalised m_j(X) P[x_L, j]',
    'pi': 'next-token law pi^X (ccmc_next_token_probs)',
    'att_scores': 'attention scores e_{x_i}^T W e_{x_L} over positions i',
    'att_weights': 'attention weights s = softmax over positions',
    'att_output': 'attention output o_k = sum_{i: x_i = k} s_i (attention_next_token_probs)',
}
MATRICES = ('W', 'A', 'P')
CCMC_QUANTITIES = ('W', 'A', 'P', 'X', 'query', 'm', 'm_freq', 'P_query', 'mP', 'pi')


def parse_W(values, name='W'):
  """The K x K matrix of a --W list flag: finite numbers, a perfect-square count, K in [2, 12]."""
  common.check_float(name, values)
  K = math.isqrt(len(values))
  if K * K != len(values) or not 2 <= K <= MAX_K:
    raise common.FlagError(f'--{name} has {len(values)} numbers: allowed values are K*K '
                           f'numbers (row-major) for K in [2, {MAX_K}], e.g. 9 for K = 3')
  return np.array([float(v) for v in values], np.float64).reshape(K, K)


def parse_X(values, K, name='X'):
  """The prompt of a --X list flag: 0-indexed tokens in [0, K-1], at least one."""
  if not values:
    raise common.FlagError(f'--{name} is empty: allowed values are 0-indexed tokens in '
                           f'[0, {K - 1}], e.g. 0,1,0')
  common.check_int(name, values, 0, K - 1)
  return np.array([int(v) for v in values], np.int32)


def validate():
  W = parse_W(_W.value)
  X = parse_X(_X.value, W.shape[0])
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return W, X


def example_quantities(W, X):
  """Every number of the worked example, by both routes (paper Fig. 1 and Fig. 2).

  Args:
    W: (K, K) attention weights (E = I).
    X: (L,) 0-indexed prompt; ``X[-1]`` is the query.
  Returns:
    dict name -> float64 numpy array (see ``QUANTITIES``): the CCMC route through the library's
    ``transition_matrix``/``token_counts``/``ccmc_next_token_probs`` and the attention route
    (scores and softmax over positions, then ``attention_next_token_probs``).
  References: paper Definition 2.1, Lemma 2.2, Fig. 1 and Fig. 2.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import model  # pylint: disable=import-outside-toplevel
  K = W.shape[0]
  W32 = np.asarray(W, np.float32)  # the library's float32; W itself is stored as given
  A = np.asarray(model.scores(W32))
  P = np.asarray(model.transition_matrix(W32))
  q = int(X[-1])
  m = np.asarray(model.token_counts(X, K))
  att_scores = A[q, X]  # e_{x_i}^T W e_{x_L} = A[x_L, x_i], one per position
  out = {
      'W': W, 'A': A, 'P': P, 'X': X, 'query': np.array([q]), 'm': m, 'm_freq': m / len(X),
      'P_query': P[q], 'mP': m * P[q],
      'pi': np.asarray(model.ccmc_next_token_probs(P, X)),
      'att_scores': att_scores,
      'att_weights': np.asarray(jax.nn.softmax(att_scores)),
      'att_output': np.asarray(model.attention_next_token_probs(W32, X)),
  }
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def to_frame(quantities, names):
  """Long-format rows (quantity, row, col, value) of the named quantities."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  frames = []
  for name in names:
    v = np.atleast_1d(quantities[name])
    rows, cols = (np.indices(v.shape).reshape(2, -1) if v.ndim == 2
                  else (np.zeros(v.size, int), np.arange(v.size)))
    frames.append(pd.DataFrame({'quantity': name, 'row': rows, 'col': cols,
                                'value': v.reshape(-1)}))
  return pd.concat(frames, ignore_index=True)


def from_frame(df, path):
  """Inverse of :func:`to_frame`: dict name -> array (matrices 2-D, the others 1-D)."""
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  out = {}
  for name, g in df.groupby('quantity', sort=False):
    rows, cols = g['row'].to_numpy(int), g['col'].to_numpy(int)
    if rows.min() < 0 or cols.min() < 0:
      raise io.ResultsError(f'{path}: quantity {name} has a negative row/col index')
    a = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    a[rows, cols] = g['value'].to_numpy(float)
    out[name] = a if name in MATRICES else a[0]
  return out


def read_quantities(path, names):
  """The example's quantities from a long-format CSV, checking that ``names`` are present."""
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  df = io.read_csv(path, required=KEYS + ['value'], numeric=['row', 'col', 'value'])
  q = from_frame(df, path)
  missing = [n for n in names if n not in q]
  if missing:
    raise io.ResultsError(f'{path} lacks quantity(ies) {", ".join(missing)}')
  return q


def annotated_heatmap(ax, M, title, highlight_row=None, cmap='Blues', fmt='.2f',
                      symmetric=False):
  """K x K heat map with every entry written in its cell; 1-indexed token labels."""
  import matplotlib.patches as mpatches  # pylint: disable=import-outside-toplevel
  K = M.shape[0]
  vmax = np.nanmax(np.abs(M)) if symmetric else None
  im = ax.imshow(M, cmap=cmap, vmin=-vmax if symmetric else None, vmax=vmax)
  for (i, j), v in np.ndenumerate(M):
    r, g, b, _ = im.cmap(im.norm(v))
    ax.text(j, i, format(v, fmt), ha='center', va='center', fontsize=max(6, 11 - K // 2),
            color='white' if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else 'black')
  ticks = range(K)
  labels = [str(k + 1) for k in ticks]
  ax.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels, title=title)
  if highlight_row is not None:
    ax.add_patch(mpatches.Rectangle((-0.5, highlight_row - 0.5), K, 1, fill=False,
                                    edgecolor='tab:red', lw=2.5, clip_on=False))
  return im


def plot(csv_path):
  """Fig. 1 from the CSV only: the prompt and m(X), the base chain P (query row boxed),
  and pi^X beside P[x_L] and m(X)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  q = read_quantities(csv_path, CCMC_QUANTITIES)
  P, X, m, pi = q['P'], q['X'].astype(int), q['m'], q['pi']
  K, L, query = P.shape[0], len(X), int(q['query'][0])
  tokens = np.arange(K)
  labels = [str(k + 1) for k in tokens]
  fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), gridspec_kw={'width_ratios': [1, 1, 1, 1.3]})

  prompt = f'[{", ".join(str(x + 1) for x in X)}]'
  ax = axes[0]
  ax.bar(tokens, q['m_freq'], color='tab:gray')
  for k in tokens:
    ax.text(k, q['m_freq'][k], f'{int(m[k])}/{L}', ha='center', va='bottom')
  ax.set(xticks=tokens, xticklabels=labels, ylim=(0, 1.12), xlabel='token j',
         ylabel=r'$m_j(X)\,/\,L$', title=f'context frequencies m(X), X = {prompt}')

  annotated_heatmap(axes[1], q['W'], r'attention weights $W$ (scores $A = W^\top$)',
                    cmap='RdBu_r', symmetric=True)
  axes[1].set(xlabel='column', ylabel='row')
  annotated_heatmap(axes[2], P, r'base chain $P = $ row-softmax$(W^\top)$, query row boxed',
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
  return common.save_figure(fig, NAME)


def main(_):
  csv, = common.csv_paths(NAME)
  if not flags.FLAGS.plot_only:
    # --quick and --resume change nothing: the example takes well under a second.
    (W, X), flag_dict = common.start(validate, FLAG_NAMES)
    results = common.Results(NAME, KEYS, flag_dict, resume=False)
    q = example_quantities(W, X)
    results.add(to_frame(q, CCMC_QUANTITIES))
    wall = results.finish(pi=[round(float(v), 6) for v in q['pi']])
    common.progress(f'{NAME}: pi^X = {np.round(q["pi"], 4).tolist()}; wrote {results.path} '
                    f'in {wall:.1f} s')
  paths = plot(csv)
  common.progress(f'{NAME}: wrote {", ".join(paths)}')


if __name__ == '__main__':
  common.run(main)
