"""Self- vs cross-attention: co-occurrence graphs and consistency (paper Fig. 3, Thm 3.4).

(a) Graphs: for a small hand-written prompt set (--graph_prompts) and one query token
(--graph_query), the co-occurrence graph G_k of the keys under self-attention (the query is a
key) and cross-attention (it is not), from ccmc_jax.identifiability.cooccurrence_graph: its
nodes, edges, connected components and whether row k of P is identifiable.

(b) Experiment: per trial, A* ~ N(0, scale^2) (K x K) and n_max IID prompts from
sampling.two_group_prompt (contexts drawn from {0..K/2-1} or from {K/2..K-1}, never both; so
every cross-attention G_k has two components). The SAME prompts are answered once by the
self-attention model and once by the cross-attention one (y ~ pi^X with the query among the
keys, or not); each data set is fitted by the convex MLE (fit.fit_scores: the Dataset's counts
carry the keys, so the query's count is simply absent for cross-attention) on its first n
samples for every n of the grid, and ||P_hat - P*||_F^2 is recorded. Self-attention is
consistent (error ~ 1/n); cross-attention is not: the split of each row's mass between the two
groups is not identified and the error plateaus. The number of rows of P identifiable from
each data set's prompts (cooccurrence_graph on the first n prompts) is recorded too.

Outputs:
  results/self_vs_cross.csv        attention, K, L, n, trial, seed, error, identifiable_rows,
                                   predicted_floor (n -> inf limit of the error: softmax of the
                                   minimum-norm scores consistent with the identified
                                   differences; 0 when identifiable), newton_iters
  results/self_vs_cross_graph.csv  long format, per attention: kind = prompt | node | edge,
                                   i, j, count, component, identifiable, tokens
  figures/self_vs_cross.{png,pdf}

  python -m experiments.self_vs_cross --K=6 --L=6 --n=1000,...,100000 --trials=10
"""
from __future__ import annotations

import functools
import time

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_integer('K', 6, 'Vocabulary size K (paper Sec. 2), in [2, 1000]; the two '
                          'context groups are {0..K/2-1} and {K/2..K-1}.')
_L = flags.DEFINE_integer('L', 6, 'Prompt length L (paper Sec. 2), >= 2: L - 1 context tokens '
                          'and the query.')
_N = flags.DEFINE_list('n', ['1000', '2154', '4642', '10000', '21544', '46416', '100000'],
                       'Sample sizes n: number of IID (prompt, next token) pairs (Sec. 3), >= 1.')
_TRIALS = flags.DEFINE_integer('trials', 10, 'Independent trials (A*, prompts, answers) per n, '
                               '>= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Ground truth A* ~ N(0, scale^2); in (0, 50].')
_RIDGE = flags.DEFINE_float('ridge', 1e-5, 'Ridge (ridge/2)||A||^2 on the NLL, >= 0. It picks the '
                            'minimum-norm estimate along the unidentified (cross-attention) '
                            'directions; at 1e-6 float32 rounding of the gradient (~1e-7) rivals '
                            'it there and Newton drifts along them.')
_GRAPH_PROMPTS = flags.DEFINE_list(
    'graph_prompts', ['1 2 3 0', '3 1 1 0', '4 5 4 0', '5 5 4 0', '2 4 5 1'],
    'Panel (a): prompts as space-separated 0-indexed tokens, the last one the query; all of '
    'one length >= 2. The graph\'s nodes are 0..max(token, --graph_query), at most 25.')
_GRAPH_QUERY = flags.DEFINE_integer('graph_query', 0, 'Panel (a): the query token k whose '
                                    'co-occurrence graph G_k is drawn, in [0, 25].')

KEYS = ['attention', 'K', 'L', 'n', 'trial']
GRAPH_KEYS = ['attention', 'kind', 'i', 'j']
NAME = 'self_vs_cross'
GRAPH_NAME = NAME + '_graph'
ATTENTIONS = ('self', 'cross')
MAX_GRAPH_TOKEN = 25
FLAG_NAMES = ['K', 'L', 'n', 'trials', 'scale', 'ridge', 'graph_prompts', 'graph_query']


def apply_quick():
  """--quick: tiny settings for a smoke run (only flags the user did not set)."""
  quick = {'n': ['300', '1000', '3000'], 'trials': 4}
  for name, value in quick.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def parse_prompts(values):
  """--graph_prompts as an (N, L) int array; FlagError naming the flag on anything else."""
  rows = []
  for v in values:
    try:
      row = [int(t) for t in v.split()]
    except ValueError:
      row = None
    if not row or min(row) < 0:
      raise common.FlagError(f'--graph_prompts={v!r} is invalid: allowed values are prompts of '
                             f'space-separated tokens >= 0, e.g. "1 2 0"')
    rows.append(row)
  if not rows:
    raise common.FlagError('--graph_prompts is empty: give at least one prompt')
  if len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
    raise common.FlagError('--graph_prompts is invalid: allowed values are prompts of one '
                           f'length >= 2, got lengths {sorted({len(r) for r in rows})}')
  return np.array(rows, np.int64)


def validate():
  """One-line errors for bad flags, before any work; returns the panel (a) prompts."""
  common.check_int('K', _K.value, 2, 1000)
  common.check_int('L', _L.value, 2, 10000)
  common.check_int('n', _N.value, 1)
  common.check_int('trials', _TRIALS.value, 1)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  prompts = parse_prompts(_GRAPH_PROMPTS.value)
  common.check_int('graph_query', _GRAPH_QUERY.value, 0, MAX_GRAPH_TOKEN)
  if prompts.max() > MAX_GRAPH_TOKEN:
    raise common.FlagError(f'--graph_prompts holds token {prompts.max()}: allowed values are '
                           f'tokens in [0, {MAX_GRAPH_TOKEN}] (a drawable graph)')
  n_max = max(int(v) for v in _N.value)
  # Prompts, two data sets' counts, grouped counts and Newton temporaries, float32.
  need = 4 * 2 * _TRIALS.value * n_max * (_L.value + 8 * _K.value)
  common.check_memory('n', n_max, need)
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return prompts


def graph_frame(prompts, query):
  """Panel (a)'s data: prompts, nodes and edges of G_query for self and cross attention."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import identifiability  # pylint: disable=import-outside-toplevel
  K = int(max(prompts.max(), query)) + 1
  frames = []
  for attention in ATTENTIONS:
    g = identifiability.cooccurrence_graph(prompts, query, attention == 'cross', K=K)
    adj, comp, ident = g.adjacency[0], g.components[0], int(g.identifiable[0])
    base = {'attention': attention, 'query': query, 'K': K, 'identifiable': ident}
    keys = prompts[:, :-1] if attention == 'cross' else prompts
    frames.append(pd.DataFrame({
        **base, 'kind': 'prompt', 'i': np.arange(len(prompts)), 'j': -1,
        'count': (prompts[:, -1] == query).astype(int), 'component': -1,
        'tokens': [' '.join(map(str, p)) for p in prompts]}))
    key_counts = np.array([(keys[prompts[:, -1] == query] == t).any(axis=1).sum()
                           for t in range(K)])
    frames.append(pd.DataFrame({**base, 'kind': 'node', 'i': np.arange(K), 'j': -1,
                                'count': key_counts, 'component': comp, 'tokens': ''}))
    i, j = np.nonzero(np.triu(adj, 1))
    frames.append(pd.DataFrame({**base, 'kind': 'edge', 'i': i, 'j': j, 'count': adj[i, j],
                                'component': comp[i], 'tokens': ''}))
  return pd.concat(frames, ignore_index=True)[
      ['attention', 'kind', 'i', 'j', 'query', 'K', 'count', 'component', 'identifiable',
       'tokens']]


@functools.lru_cache(maxsize=None)
def _compiled(K, L, n_max, scale):
  """jit(lax.map over trials): A*, n_max two-group prompts, and the self and cross answers.

  lax.map, not vmap: each trial's sampling is already vectorised over samples (see
  experiments.sample_complexity). Both data sets share the prompts and the answer uniforms.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import model  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling  # pylint: disable=import-outside-toplevel
  prompt_fn = sampling.two_group_prompt(K, L)

  def make_trial(key):
    w_key, x_key, y_key = jax.random.split(key, 3)
    A = sampling.sample_scores(w_key, K, scale)
    X = sampling.sample_prompts(x_key, n_max, L, prompt_fn)
    data = [sampling.Dataset(X[:, -1], model.token_counts(X, K, cross),
                             sampling.sample_next_tokens(y_key, A, X, cross))
            for cross in (False, True)]
    return A, X, jax.tree.map(lambda s, c: jax.numpy.stack([s, c]), *data)

  return jax.jit(lambda keys: jax.lax.map(make_trial, keys))


@functools.lru_cache(maxsize=None)
def _fit_cell(K, capacity, ridge):
  """jit(vmap over attention x trials) of fit + error at a traced n: one compilation."""
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel

  def cell(data, A, n):
    res = fit.fit_scores(data, K, capacity, n, ridge=ridge)
    return fit.p_error(res.A_hat, A), res.iters, res.dropped

  per_trial = jax.vmap(cell, in_axes=(0, None, None))  # over the two attentions
  return jax.jit(jax.vmap(per_trial, in_axes=(0, 0, None)))  # over trials


def trial_keys(seed, K, L, trials):
  """Key of trial i: fold_in(fold_in(fold_in(seed, K), L), i) (as experiments.sample_complexity)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  root = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), K), L)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(trials))


def identifiability_summary(A, X, n, cross):
  """Per trial, from its first n prompts: identifiable rows of P, and the predicted plateau.

  The plateau is ||softmax(A_mn) - P*||_F^2 with A_mn the minimum-norm scores agreeing with A*
  on the identified differences (one free offset per component of each G_k): the limit of the
  ridge-regularised MLE as n -> inf; 0 when every row is identifiable.
  Returns:
    ((trials,) int, (trials,) float).
  """
  from ccmc_jax import identifiability  # pylint: disable=import-outside-toplevel
  K = _K.value
  def softmax(S):
    e = np.exp(S - S.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

  rows, floor = [], []
  for a, x in zip(A, X):
    g = identifiability.cooccurrence_graph(x[:n], None, cross, K=K)
    A_mn = identifiability.min_norm_scores(a, identifiability.component_labels(g))
    rows.append(int(g.identifiable.sum()))
    # Exactly 0 when identifiable (A_mn is then the row-centred A*: only rounding would remain).
    floor.append(0.0 if g.all_identifiable else
                 float(((softmax(A_mn) - softmax(np.asarray(a, np.float64))) ** 2).sum()))
  return np.array(rows), np.array(floor)


def run_experiment(results):
  """Run every n not yet in ``results`` (both attentions at once), writing after each one."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel
  K, L, trials, start = _K.value, _L.value, _TRIALS.value, time.time()
  ns = sorted({int(v) for v in _N.value})
  todo = [n for n in ns if not results.done({'n': n})]
  if not todo:
    return
  A, X, data = _compiled(K, L, max(ns), _SCALE.value)(
      trial_keys(flags.FLAGS.seed, K, L, trials))
  X, A_host = np.asarray(X), np.asarray(A)
  capacity = fit.round_capacity(fit.row_capacity(data.query[:, 0], K), 1024)
  for done, n in enumerate(ns, 1):
    if n not in todo:
      continue
    err, iters, dropped = map(np.asarray, _fit_cell(K, capacity, _RIDGE.value)(data, A, n))
    assert not dropped.any(), 'row capacity too small'  # by construction of `capacity`
    for a, attention in enumerate(ATTENTIONS):
      rows, floor = identifiability_summary(A_host, X, n, attention == 'cross')
      results.add(pd.DataFrame({
          'attention': attention, 'K': K, 'L': L, 'n': n, 'trial': np.arange(trials),
          'seed': flags.FLAGS.seed, 'error': err[:, a], 'identifiable_rows': rows,
          'predicted_floor': floor, 'newton_iters': iters[:, a]}))
    common.progress(f'{NAME}: n={n} ({done}/{len(ns)}) mean error self {err[:, 0].mean():.3g}, '
                    f'cross {err[:, 1].mean():.3g}', start)


def summary(df):
  """Least-squares slope of log(mean error) vs log(n) per attention, and cross/self at max n."""
  out = {}
  for attention, g in df.groupby('attention'):
    m = g.groupby('n')['error'].mean()
    if len(m) >= 2:
      out[f'{attention}_slope'] = float(np.polyfit(np.log(m.index.values), np.log(m.values),
                                                   1)[0])
    out[f'{attention}_error_at_max_n'] = float(m.iloc[-1])
    if 'predicted_floor' in g:
      out[f'{attention}_predicted_floor_at_max_n'] = float(
          g[g['n'] == g['n'].max()]['predicted_floor'].mean())
  if {'self_error_at_max_n', 'cross_error_at_max_n'} <= set(out):
    out['cross_self_ratio_at_max_n'] = out['cross_error_at_max_n'] / out['self_error_at_max_n']
  return out


def draw_graph(ax, g):
  """Panel (a): G_k with nodes on a circle, edges (width ~ count), components coloured."""
  nodes = g[g['kind'] == 'node'].sort_values('i')
  edges = g[g['kind'] == 'edge']
  K, query = int(nodes['K'].iloc[0]), int(nodes['query'].iloc[0])
  angle = np.pi / 2 - 2 * np.pi * np.arange(K) / K
  xy = np.stack([np.cos(angle), np.sin(angle)], 1)
  colors = plt_colors()
  for _, e in edges.iterrows():
    (x0, y0), (x1, y1) = xy[int(e['i'])], xy[int(e['j'])]
    ax.plot([x0, x1], [y0, y1], '-', color=colors[int(e['component']) % len(colors)],
            lw=1.5 + 1.5 * (e['count'] - 1), alpha=0.7, zorder=1)
  for _, v in nodes.iterrows():
    t, c = int(v['i']), int(v['component'])
    face = colors[c % len(colors)] if c >= 0 else 'white'
    ax.scatter(*xy[t], s=900, color=face, edgecolors='k', zorder=2,
               linestyle='-' if c >= 0 else '--', linewidths=3 if t == query else 1)
    ax.text(*xy[t], str(t), ha='center', va='center', fontsize=13, zorder=3,
            color='k' if c < 0 else 'white', weight='bold')
  n_comp = int(nodes['component'].max()) + 1
  uncovered = nodes[nodes['component'] < 0]['i'].astype(int).tolist()
  ident = bool(g['identifiable'].iloc[0])
  attention = g['attention'].iloc[0]
  what = f'{n_comp} component{"s" if n_comp != 1 else ""}'
  if uncovered:
    what += f', token{"s" if len(uncovered) > 1 else ""} {",".join(map(str, uncovered))} never a key'
  ax.set_title(f'{attention}-attention, query {query}: $G_{{{query}}}$\n{what}\n'
               f'row {query} of P identifiable: {"yes" if ident else "NO"}',
               color='k' if ident else 'firebrick', fontsize=10)
  prompts = g[g['kind'] == 'prompt'].sort_values('i')
  lines = ['prompt X      key set']
  for tok in prompts['tokens']:
    t = [int(v) for v in tok.split()]
    keys = sorted(set(t[:-1] if attention == 'cross' else t))
    line = f'[{" ".join(map(str, t))}]'.ljust(14) + '{' + ','.join(map(str, keys)) + '}'
    lines.append(line + ('' if t[-1] == query else f'  query {t[-1]}: not in $G_{{{query}}}$'))
  ax.text(-1.3, -1.3, '\n'.join(lines), ha='left', va='top', fontsize=8, family='monospace')
  ax.set(xlim=(-1.4, 1.4), ylim=(-1.35 - 0.2 * len(lines), 1.3), aspect='equal')
  ax.axis('off')


def plt_colors():
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt.rcParams['axes.prop_cycle'].by_key()['color']


def plot(csv_path, graph_path):
  """Figure from the CSVs only: the two graphs of panel (a) and error vs n (panel b)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  numeric = ['K', 'L', 'n', 'trial', 'error', 'identifiable_rows', 'predicted_floor']
  df = io.read_csv(csv_path, required=['attention'] + numeric, numeric=numeric)
  graph_numeric = ['i', 'j', 'query', 'K', 'count', 'component', 'identifiable']
  graph = io.read_csv(graph_path, required=['attention', 'kind', 'tokens'] + graph_numeric,
                      numeric=graph_numeric)
  graph['tokens'] = graph['tokens'].fillna('').astype(str)
  if df.empty or graph.empty:
    raise io.ResultsError(f'{csv_path if df.empty else graph_path} has no rows')
  fig, axes = plt.subplots(1, 3, figsize=(16, 5.6), gridspec_kw={'width_ratios': [1, 1, 1.5]})
  for ax, attention in zip(axes[:2], ATTENTIONS):
    draw_graph(ax, graph[graph['attention'] == attention])
  ax = axes[2]
  stats = summary(df)
  K, L = int(df['K'].iloc[0]), int(df['L'].iloc[0])
  for attention, color in zip(ATTENTIONS, ('tab:blue', 'tab:red')):
    g = df[df['attention'] == attention].groupby('n')
    if not len(g):
      continue
    mean, std = g['error'].mean(), g['error'].std().fillna(0)
    n = mean.index.values
    rows = g['identifiable_rows']
    lo, hi = int(rows.min().min()), int(rows.max().max())
    ident = f'{lo}' if lo == hi else f'{lo}–{hi}'
    slope = stats.get(f'{attention}_slope', np.nan)
    label = (f'{attention}: slope {slope:.2f}' if attention == 'self' else
             f'{attention}: floor {mean.iloc[-1]:.2g} (slope {slope:.2f})')
    ax.plot(n, mean, 'o-', color=color, label=f'{label}; identifiable rows {ident}/{K}')
    ax.fill_between(n, np.maximum(mean - std, mean * 1e-2), mean + std, color=color, alpha=0.2)
    floor = g['predicted_floor'].mean()
    if attention == 'cross' and (floor > 0).all():
      ax.plot(n, floor, '--', color=color, lw=1.2,
              label=f'cross: predicted plateau {floor.iloc[-1]:.2g} (min-norm limit)')
  self_mean = df[df['attention'] == 'self'].groupby('n')['error'].mean()
  if len(self_mean):
    n = self_mean.index.values
    ax.plot(n, self_mean.iloc[-1] * n[-1] / n, ':', color='gray', lw=1, label='∝ 1/n')
  ratio = stats.get('cross_self_ratio_at_max_n')
  title = f'two-group prompts, K={K}, L={L} (mean ± std, {df["trial"].nunique()} trials)'
  if ratio is not None:
    title += f'\ncross/self error at n={int(df["n"].max()):,}: {ratio:.0f}x'
  ax.set(xscale='log', yscale='log', xlabel='n (IID prompts)', ylabel='‖P̂ − P*‖²_F',
         title=title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8, loc='lower left', title='identifiable rows: cooccurrence_graph of each '
            "trial's first n prompts", title_fontsize=7)
  fig.suptitle('Self- vs cross-attention (paper Fig. 3, Thm 3.4): co-occurrence graphs on the '
               'same prompts (tokens 0-indexed; thick ring = query; dashed = never a key) and '
               'consistency of the MLE', fontsize=11)
  fig.tight_layout()
  return common.save_figure(fig, NAME)


def main(_):
  csv, graph_csv = common.csv_paths(NAME, GRAPH_NAME)
  if not flags.FLAGS.plot_only:
    prompts, flag_dict = common.start(validate, FLAG_NAMES)
    graph = common.Results(GRAPH_NAME, GRAPH_KEYS, flag_dict, resume=False)
    graph.add(graph_frame(prompts, _GRAPH_QUERY.value))
    ident = graph.frame.groupby('attention')['identifiable'].first()
    graph.finish(**{f'{a}_identifiable': bool(ident[a]) for a in ATTENTIONS})
    results = common.Results(NAME, KEYS, flag_dict, flags.FLAGS.resume)
    run_experiment(results)
    stats = summary(results.frame)
    wall = results.finish(**stats)
    common.progress(f'{NAME}: self slope {stats.get("self_slope", np.nan):.3f}, cross/self at '
                    f'max n {stats.get("cross_self_ratio_at_max_n", np.nan):.1f}; wrote '
                    f'{results.path} in {wall:.1f} s')
  paths = plot(csv, graph_csv)
  common.progress(f'{NAME}: wrote {", ".join(paths)}')


if __name__ == '__main__':
  common.run(main, quick=apply_quick)
