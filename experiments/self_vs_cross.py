"""Self- vs cross-attention: co-occurrence graphs and consistency (paper Fig. 3, Thm 3.4).

(a) Graphs: for a small hand-written prompt set (--graph_prompts, its own length) and one query
token (--graph_query), the co-occurrence graph G_k of the keys under self-attention (the query
is a key) and cross-attention (it is not): nodes, edges, components, and whether row k of P is
identifiable.
(b) Experiment: per trial, A* ~ N(0, scale^2) and n_max IID two-group prompts of length --L
(contexts from {0..K/2-1} or {K/2..K-1}, never both), answered once by the self- and once by
the cross-attention model; each data set is fitted by the convex MLE on its first n samples for
every n and ||P_hat - P*||_F^2 recorded, with the identifiable rows and the predicted plateau.
Trials: ccmc_jax.trials.self_vs_cross; figure: experiments.plots.self_vs_cross. Outputs:

  results/self_vs_cross.csv        attention, K, L, n, trial, seed, error, identifiable_rows,
                                   predicted_floor (n -> inf limit of the error: softmax of the
                                   minimum-norm scores consistent with the identified
                                   differences; 0 when identifiable), newton_iters
  results/self_vs_cross_graph.csv  long format, per attention: kind = prompt | node | edge,
                                   i, j, count, component, identifiable, tokens
  figures/self_vs_cross.{png,pdf}

  python -m experiments.self_vs_cross --K=6 --L=6 --n=1000,10000,100000 --trials=10
"""
from __future__ import annotations

import time

from absl import flags
import numpy as np

from ccmc_jax import memory
from ccmc_jax.trials import self_vs_cross as trials
from experiments import common
from experiments.plots import self_vs_cross as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_integer('K', 6, 'Vocabulary size K (paper Sec. 2), in [2, 1000]; the two '
                          'context groups are {0..K/2-1} and {K/2..K-1}.')
_L = flags.DEFINE_integer('L', 6, 'Prompt length L of the experiment (b) (paper Sec. 2), >= 2: '
                          'L - 1 context tokens and the query.')
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
    'one length >= 2 (any length: panel (a) is an illustration apart from --L). The graph\'s '
    'nodes are 0..max(token, --graph_query), at most 25.')
_GRAPH_QUERY = flags.DEFINE_integer('graph_query', 0, 'Panel (a): the query token k whose '
                                    'co-occurrence graph G_k is drawn, in [0, 25].')

NAME = 'self_vs_cross'
GRAPH_NAME = NAME + '_graph'
KEYS = ['attention', 'K', 'L', 'n', 'trial']
GRAPH_KEYS = ['attention', 'kind', 'i', 'j']
MAX_GRAPH_TOKEN = 25
FLAG_NAMES = ['K', 'L', 'n', 'trials', 'scale', 'ridge', 'graph_prompts', 'graph_query']
QUICK = {'n': ['300', '1000', '3000'], 'trials': 4}


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
  common.check_memory(memory.self_vs_cross(_K.value, _L.value, n_max, _TRIALS.value))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return prompts


def run(prompts, results):
  """The graphs, then every n not yet in the results (both attentions at once)."""
  results[GRAPH_NAME].add(trials.graph_columns(prompts, _GRAPH_QUERY.value))
  setting = trials.Setting(_K.value, _L.value, tuple(sorted({int(v) for v in _N.value})),
                           _SCALE.value, _RIDGE.value)
  todo = [n for n in setting.ns if not results[NAME].done({'n': n})]
  if not todo:
    return
  seed, start = flags.FLAGS.seed, time.time()
  keys = trials.keys(seed, setting, _TRIALS.value)
  for n, out in trials.run_setting(setting, keys, todo):
    with results.unit():  # both attentions of n or neither (--resume)
      for attention, columns in out.items():
        results[NAME].add({'attention': attention, 'K': setting.K, 'L': setting.L, 'n': n,
                           'trial': np.arange(_TRIALS.value), 'seed': seed, **columns})
    common.progress(f'{NAME}: n={n} ({setting.ns.index(n) + 1}/{len(setting.ns)}) mean error '
                    f'self {out["self"]["error"].mean():.3g}, cross '
                    f'{out["cross"]["error"].mean():.3g}', start)


def graph_summary(frame):
  ident = frame.groupby('attention')['identifiable'].first()
  return {f'{a}_identifiable': bool(ident[a]) for a in trials.ATTENTIONS}


SPEC = common.Spec(
    NAME, [common.Table(NAME, KEYS, trials.summary),
           common.Table(GRAPH_NAME, GRAPH_KEYS, graph_summary, resume=False)],
    FLAG_NAMES, validate, run, plots.plot,
    message=lambda s: (f'self slope {s.get("self_slope", np.nan):.3f}, cross/self at max n '
                       f'{s.get("cross_self_ratio_at_max_n", np.nan):.1f}'))

if __name__ == '__main__':
  common.run(SPEC, quick=QUICK)
