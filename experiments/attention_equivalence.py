"""Attention is a CCMC (paper Fig. 2, Lemma 2.2): the worked example and a numerical check.

Diagram: the paper's example K = 3, X = [1, 2, 1] (1-indexed; 0,1,0 in code and CSV, the --W and
--X flags of experiments.ccmc_example) computed by two routes. Attention: scores
e_{x_i}^T W e_{x_L} over the positions i, softmax over positions, and the mass of each token
summed over its positions. CCMC: the counts m(X) mask the query row P[x_L] of the base chain
P = row-softmax(W^T), then normalise.

Check: for every cell (K, L, attention) of the sweep, --trials draws W ~ N(0, scale^2) (K x K,
E = I), each with --prompts uniform prompts X, and compares attention_next_token_probs(W, X)
with ccmc_next_token_probs(transition_matrix(W), X) on all K probabilities. One jit(vmap over
W draws) per cell. Outputs:

  results/attention_equivalence.csv          K, L, cross, trial, seed, prompts (pairs in the
                                             block), count (probabilities compared),
                                             max_abs_diff, mean_abs_diff, max_sum_error
  results/attention_equivalence_points.csv   scatter subsample: K, L, cross, trial, token,
                                             attention, ccmc (first prompt of the first
                                             --scatter_trials draws)
  results/attention_equivalence_example.csv  the example's quantities (quantity, row, col,
                                             value), as in results/ccmc_example.csv
  figures/attention_equivalence.{png,pdf}

  python -m experiments.attention_equivalence --K=3,10,50 --L=1,10,100 --trials=100 --prompts=100
"""
from __future__ import annotations

import functools
import time

from absl import flags
import numpy as np

from experiments import ccmc_example
from experiments import common

_K = flags.DEFINE_list('K', ['3', '10', '50'], 'Vocabulary sizes K (paper Sec. 2), in [2, 1000].')
_L = flags.DEFINE_list('L', ['1', '10', '100'], 'Prompt lengths L (paper Sec. 2), >= 1; '
                       'cross-attention cells need L >= 2 (L = 1 is skipped for them).')
_ATTENTION = flags.DEFINE_list('attention', ['self', 'cross'], 'Attention kinds: self (the '
                               'query is a key) and/or cross (it is not; paper Sec. 2).')
_TRIALS = flags.DEFINE_integer('trials', 100, 'Independent draws of W per (K, L, attention) '
                               'cell, >= 1.')
_PROMPTS = flags.DEFINE_integer('prompts', 100, 'Uniform random prompts X per draw of W, >= 1: '
                                'a cell compares trials * prompts (W, X) pairs.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Weights W ~ N(0, scale^2), E = I; in (0, 50].')
_SCATTER = flags.DEFINE_integer('scatter_trials', 20, 'Draws per cell whose first prompt goes '
                                'to the scatter panel (K points each), in [0, trials].')
_TOL = flags.DEFINE_float('tol', 1e-5, 'Tolerance on the max absolute difference (float32), '
                          'drawn on the figure and reported; > 0.')
flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help
flags.declare_key_flag('W')  # the example's weights and prompt: experiments.ccmc_example
flags.declare_key_flag('X')

NAME = 'attention_equivalence'
POINTS_NAME = NAME + '_points'
EXAMPLE_NAME = NAME + '_example'
KEYS = ['K', 'L', 'cross', 'trial']
POINT_KEYS = KEYS + ['token']
METRICS = ['max_abs_diff', 'mean_abs_diff', 'max_sum_error', 'count']
FLAG_NAMES = ['K', 'L', 'attention', 'trials', 'prompts', 'scale', 'scatter_trials', 'tol',
              'W', 'X']
EXAMPLE_QUANTITIES = tuple(ccmc_example.QUANTITIES)


def apply_quick():
  """--quick: tiny settings for a smoke run (only flags the user did not set)."""
  quick = {'K': ['3', '10'], 'L': ['1', '10'], 'trials': 8, 'prompts': 50, 'scatter_trials': 4}
  for name, value in quick.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def cells():
  """The (K, L, cross) cells of the sweep; cross-attention with L = 1 has no keys: skipped."""
  out = []
  for attention in dict.fromkeys(_ATTENTION.value):
    cross = attention == 'cross'
    out += [(int(K), int(L), cross) for K in dict.fromkeys(_K.value)
            for L in dict.fromkeys(_L.value) if not (cross and int(L) < 2)]
  return out


def validate():
  """One-line errors for bad flags, before any work; returns the example's (W, X)."""
  common.check_int('K', _K.value, 2, 1000)
  common.check_int('L', _L.value, 1, 10000)
  common.check_choice('attention', _ATTENTION.value, ['self', 'cross'])
  if not _ATTENTION.value:
    raise common.FlagError('--attention is empty: allowed values are self, cross')
  common.check_int('trials', _TRIALS.value, 1)
  common.check_int('prompts', _PROMPTS.value, 1)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_int('scatter_trials', _SCATTER.value, 0, _TRIALS.value)
  common.check_float('tol', _TOL.value, 0, lo_open=True)
  if not cells():
    raise common.FlagError('--L has no value >= 2 and --attention=cross: no cell to run '
                           '(cross-attention needs L >= 2)')
  for K, L, _ in cells():
    # Embedded keys and one-hot tokens of a whole cell (trials * prompts * L * K, float32).
    common.check_memory('prompts', _PROMPTS.value, 4 * 3 * _TRIALS.value * _PROMPTS.value * L * K)
  W = ccmc_example.parse_W(flags.FLAGS.W)
  X = ccmc_example.parse_X(flags.FLAGS.X, W.shape[0])
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return W, X


@functools.lru_cache(maxsize=None)
def _sampler(K_max, L_max, prompts):
  """jit(lax.map over draws) of the randomness of a cell, at the sweep's largest K and L.

  Draw i gets standard normals (K_max, K_max) and uniforms (prompts, L_max) from its own key;
  a cell takes the leading (K, K) block and the first L columns. With one shape for the whole
  sweep this is the only compiled program holding the PRNG (threefry is slow to compile on
  CPU, and lax.map compiles it faster than vmap).
  """
  import jax  # pylint: disable=import-outside-toplevel

  def draw(key):
    w_key, x_key = jax.random.split(key)
    return (jax.random.normal(w_key, (K_max, K_max)),
            jax.random.uniform(x_key, (prompts, L_max)))

  return jax.jit(lambda keys: jax.lax.map(draw, keys))


@functools.lru_cache(maxsize=None)
def _cell(K, L, cross, scale):
  """jit(vmap over W draws) of one cell: both routes on every prompt, their differences, and
  the first prompt's probabilities for the scatter panel. No PRNG inside (see _sampler)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ccmc_jax import model, sampling  # pylint: disable=import-outside-toplevel
  prompt_fn = sampling.uniform_prompt(K, L)

  def trial(normals, u):
    W = scale * normals[:K, :K]  # W ~ N(0, scale^2), E = I
    X = prompt_fn(u[:, :L + 1])  # uniform prompts (the sampler reads the first L uniforms)
    att = model.attention_next_token_probs(W, X, cross=cross)
    ccmc = model.ccmc_next_token_probs(model.transition_matrix(W), X, cross=cross)
    diff = jnp.abs(att - ccmc)
    sum_error = jnp.maximum(jnp.abs(att.sum(-1) - 1), jnp.abs(ccmc.sum(-1) - 1)).max()
    return diff.max(), diff.mean(), sum_error, att[0], ccmc[0]

  return jax.jit(jax.vmap(trial))


def cell_keys(seed, K, L, cross, trials):
  """Key of draw i of a cell: fold_in(fold_in(fold_in(fold_in(seed, K), L), cross), i)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  root = jax.random.PRNGKey(seed)
  for v in (K, L, int(cross)):
    root = jax.random.fold_in(root, v)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(trials))


def run_check(results, points):
  """Every cell not yet in ``results``: one compiled call, rows written after each cell."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  trials, prompts, seed, start = _TRIALS.value, _PROMPTS.value, flags.FLAGS.seed, time.time()
  todo = cells()
  sampler = _sampler(max(K for K, _, _ in todo), max(L for _, L, _ in todo) + 1, prompts)
  for c, (K, L, cross) in enumerate(todo):
    setting = {'K': K, 'L': L, 'cross': int(cross)}
    if results.done(setting):
      continue
    normals, u = sampler(cell_keys(seed, K, L, cross, trials))
    max_d, mean_d, sum_err, att, ccmc = map(np.asarray, _cell(K, L, cross, _SCALE.value)(
        normals, u))
    s = _SCATTER.value
    # Points first: a cell present in `results` always has its points (for --resume).
    points.add(pd.DataFrame({
        **setting, 'trial': np.repeat(np.arange(s), K), 'token': np.tile(np.arange(K), s),
        'attention': att[:s].reshape(-1), 'ccmc': ccmc[:s].reshape(-1)}))
    results.add(pd.DataFrame({
        **setting, 'trial': np.arange(trials), 'seed': seed, 'prompts': prompts,
        'count': prompts * K, 'max_abs_diff': max_d, 'mean_abs_diff': mean_d,
        'max_sum_error': sum_err}))
    common.progress(f'{NAME}: K={K} L={L} {"cross" if cross else "self"} ({c + 1}/{len(todo)}): '
                    f'{trials * prompts} pairs, max |attention - CCMC| = {max_d.max():.2e}',
                    start)


def summary(df):
  """Max abs difference and pairs compared, overall and per cell."""
  per_cell = df.groupby(['K', 'L', 'cross']).agg(
      max_abs_diff=('max_abs_diff', 'max'), pairs=('prompts', 'sum')).reset_index()
  return float(df['max_abs_diff'].max()), int(df['prompts'].sum()), per_cell


def _bar_labels(ax, x, values, fmt='{:.2f}', **kw):
  for xi, v in zip(x, values):
    ax.text(xi, v, fmt.format(v), ha='center', va='bottom' if v >= 0 else 'top', fontsize=8,
            **kw)


def plot(csv_path, points_path, example_path):
  """Fig. 2 from the CSVs only: attention route (top), CCMC route (bottom), numerical check."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  df = io.read_csv(csv_path, required=KEYS + METRICS + ['prompts'],
                   numeric=KEYS + METRICS + ['prompts'])
  pts = io.read_csv(points_path, required=POINT_KEYS + ['attention', 'ccmc'],
                    numeric=POINT_KEYS + ['attention', 'ccmc'])
  if df.empty:
    raise io.ResultsError(f'{csv_path} has no rows')
  q = ccmc_example.read_quantities(example_path, EXAMPLE_QUANTITIES)
  P, X, m = q['P'], q['X'].astype(int), q['m']
  K3, L3, query = P.shape[0], len(X), int(q['query'][0])
  tokens, positions = np.arange(K3), np.arange(L3)
  tok_labels = [str(k + 1) for k in tokens]
  colors = plt.cm.tab10(np.arange(10))
  prompt = f'[{", ".join(str(x + 1) for x in X)}]'

  fig, axes = plt.subplots(2, 4, figsize=(20, 8.6),
                           gridspec_kw={'width_ratios': [1, 1, 1, 1.25]})
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
  ax.plot(tokens, q['pi'], '_', color='k', ms=40, mew=2.5, label=r'CCMC $\pi^X_k$ (panel f-g)')
  for k in tokens:
    ax.text(k, q['att_output'][k] + 0.04, f"o = {q['att_output'][k]:.4f}\n"
            f"π = {q['pi'][k]:.4f}", ha='center', va='bottom', fontsize=8)
  ax.set(xticks=tokens, xticklabels=tok_labels, ylim=(0, 1.12), xlabel='token k',
         ylabel='$o_k$ = sum of $s_i$ over positions with $x_i = k$',
         title='(c) attention output: mass per token')
  ax.legend(fontsize=8, loc='upper right')

  # CCMC route (bottom row): the query row of P, masked by the counts, normalised.
  ccmc_example.annotated_heatmap(axes[1, 0], P, f'(d) base chain P = row-softmax($W^\\top$), '
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
  worst, pairs, per_cell = summary(df)
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
  ax.axhline(_TOL.value, color='tab:red', ls='--', label=f'tolerance {_TOL.value:g}')
  ax.axhline(np.finfo(np.float32).eps, color='gray', ls=':', label='float32 eps')
  ax.set(yscale='log', xticks=x, ylim=(floor / 2, _TOL.value * 20),
         ylabel='max |attention - CCMC| per cell',
         title=f'per cell (blue self, orange cross): {int(per_cell["pairs"].iloc[0]):,} pairs each')
  ax.set_xticklabels(labels, fontsize=6.5, rotation=90)
  ax.legend(fontsize=8)
  fig.suptitle(f'Attention = CCMC (paper Fig. 2): K = {K3}, X = {prompt} (tokens 1-indexed as in '
               f'the paper; 0-indexed in code and CSV). Top: attention route; bottom: CCMC '
               f'route; right: random W ~ N(0, σ²), uniform X')
  fig.tight_layout()
  return common.save_figure(fig, NAME)


def main(_):
  csv, points_csv, example_csv = common.csv_paths(NAME, POINTS_NAME, EXAMPLE_NAME)
  if not flags.FLAGS.plot_only:
    (W, X), flag_dict = common.start(validate, FLAG_NAMES)
    example = common.Results(EXAMPLE_NAME, ccmc_example.KEYS, flag_dict, resume=False)
    q = ccmc_example.example_quantities(W, X)
    example.add(ccmc_example.to_frame(q, EXAMPLE_QUANTITIES))
    example.finish(max_abs_diff=float(np.abs(q['att_output'] - q['pi']).max()))
    points = common.Results(POINTS_NAME, POINT_KEYS, flag_dict, flags.FLAGS.resume)
    results = common.Results(NAME, KEYS, flag_dict, flags.FLAGS.resume)
    run_check(results, points)
    worst, pairs, _ = summary(results.frame)
    points.finish()
    wall = results.finish(max_abs_diff=worst, pairs=pairs, tol=_TOL.value,
                          passed=bool(worst <= _TOL.value))
    common.progress(f'{NAME}: max |attention - CCMC| = {worst:.2e} over {pairs} (W, X) pairs '
                    f'({"<=" if worst <= _TOL.value else "> "} tol {_TOL.value:g}); '
                    f'wrote {results.path} in {wall:.1f} s')
  paths = plot(csv, points_csv, example_csv)
  common.progress(f'{NAME}: wrote {", ".join(paths)}')


if __name__ == '__main__':
  common.run(main, quick=apply_quick)
