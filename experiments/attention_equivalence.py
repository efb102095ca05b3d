"""Attention is a CCMC (paper Fig. 2, Lemma 2.2): the worked example and a numerical check.

Diagram: the paper's example K = 3, X = [1, 2, 1] (1-indexed; 0,1,0 in code and CSV; --W, --X as
in experiments.ccmc_example) computed by two routes. Attention: scores e_{x_i}^T W e_{x_L} over
the positions i, softmax over positions, and the mass of each token summed over its positions.
CCMC: the counts m(X) mask the query row P[x_L] of the base chain P = row-softmax(W^T), then
normalise.

Check: for every cell (K, L, attention) of the sweep, --trials draws W ~ N(0, scale^2) (K x K,
E = I), each with --prompts uniform prompts X, and compares attention_next_token_probs(W, X)
with ccmc_next_token_probs(transition_matrix(W), X) on all K probabilities
(ccmc_jax.trials.attention_equivalence; figure: experiments.plots.attention_equivalence). Outputs:

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

import time

from absl import flags
import numpy as np

from ccmc_jax import io
from ccmc_jax import memory
from ccmc_jax.trials import attention_equivalence as trials
from ccmc_jax.trials import ccmc_example as example
from experiments import common
from experiments.plots import attention_equivalence as plots

_K = flags.DEFINE_list('K', ['3', '10', '50'], 'Vocabulary sizes K (paper Sec. 2), in [2, 1000].')
_L = flags.DEFINE_list('L', ['1', '10', '100'], 'Prompt lengths L (paper Sec. 2), >= 1; '
                       'cross-attention cells need L >= 2 (L = 1 is skipped for them).')
_ATTENTION = flags.DEFINE_list('attention', ['self', 'cross'], 'Attention kinds: self (the '
                               'query is a key) and/or cross (it is not; paper Sec. 2).')
_TRIALS = flags.DEFINE_integer('trials', 100, 'Independent draws of W per (K, L, attention) '
                               'cell, >= 1.')
_PROMPTS = flags.DEFINE_integer('prompts', 100, 'Uniform random prompts X per draw of W, >= 1: '
                                'a cell compares trials * prompts (W, X) pairs.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Weights W ~ N(0, scale^2), E = I; in (0, 50]. The CCMC '
                            'route uses the float32 P = softmax(W^T), which underflows on every '
                            'key token when score gaps pass ~87: above about scale 10 some draws '
                            'then differ and the run fails (exit 1).')
_SCATTER = flags.DEFINE_integer('scatter_trials', 20, 'Draws per cell whose first prompt goes '
                                'to the scatter panel (K points each), in [0, trials].')
_TOL = flags.DEFINE_float('tol', 1e-5, 'Tolerance on the max absolute difference (float32), '
                          'drawn on the figure; > 0. A larger difference (or NaN) makes the run '
                          'print FAILED and exit 1 after writing the CSVs and figure.')
_W = flags.DEFINE_list('W', example.DEFAULT_W, 'The worked example\'s attention weights W, K*K '
                       'numbers in row-major order, 2 <= K <= 12, each in [-40, 40] (as '
                       'experiments.ccmc_example).')
_X = flags.DEFINE_list('X', example.DEFAULT_X, 'The worked example\'s prompt, 0-indexed tokens '
                       'in [0, K-1], the last one the query (as experiments.ccmc_example).')
flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

NAME = 'attention_equivalence'
POINTS_NAME = NAME + '_points'
EXAMPLE_NAME = NAME + '_example'
FLAG_NAMES = ['K', 'L', 'attention', 'trials', 'prompts', 'scale', 'scatter_trials', 'tol',
              'W', 'X']
QUICK = {'K': ['3', '10'], 'L': ['1', '10'], 'trials': 8, 'prompts': 50, 'scatter_trials': 4}


def cells():
  return trials.cells(_K.value, _L.value, _ATTENTION.value)


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
    common.check_memory(memory.attention_equivalence(K, L, _TRIALS.value, _PROMPTS.value))
  common.check_float('W', _W.value, -example.MAX_ABS_W, example.MAX_ABS_W)
  W = common.parse_W('W', _W.value)
  X = common.parse_X('X', _X.value, W.shape[0])
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return W, X


def run(W_X, results):
  """The example, then every cell not yet in the results (its two tables written together)."""
  results[EXAMPLE_NAME].add(example.to_columns(example.example_quantities(*W_X),
                                               tuple(example.QUANTITIES)))
  trial_count, prompts, seed, start = _TRIALS.value, _PROMPTS.value, flags.FLAGS.seed, time.time()
  todo, s = cells(), _SCATTER.value
  sweep = trials.Sweep(max(c.K for c in todo), max(c.L for c in todo) + 1, prompts, _SCALE.value)
  for i, cell in enumerate(todo):
    setting = {'K': cell.K, 'L': cell.L, 'cross': int(cell.cross)}
    if results[NAME].done(setting):
      continue
    out = {k: np.asarray(v) for k, v in trials.run_cell(
        cell, sweep, trials.keys(seed, cell, trial_count)).items()}
    with results.unit():  # both tables or neither (--resume)
      results[POINTS_NAME].add({
          **setting, 'trial': np.repeat(np.arange(s), cell.K),
          'token': np.tile(np.arange(cell.K), s),
          'attention': out['attention'][:s].reshape(-1), 'ccmc': out['ccmc'][:s].reshape(-1)})
      results[NAME].add({**setting, 'trial': np.arange(trial_count), 'seed': seed,
                         'prompts': prompts, 'count': prompts * cell.K,
                         **{k: out[k] for k in trials.COLUMNS[:3]}})
    common.progress(f'{NAME}: K={cell.K} L={cell.L} {"cross" if cell.cross else "self"} '
                    f'({i + 1}/{len(todo)}): {trial_count * prompts} pairs, max |attention - '
                    f'CCMC| = {out["max_abs_diff"].max():.2e}', start)


def summary(frame):
  worst, pairs, _ = trials.summary(frame)
  return {'max_abs_diff': worst, 'pairs': pairs, 'tol': _TOL.value,
          'passed': bool(0 <= worst <= _TOL.value)}  # False for NaN


def example_summary(frame):
  q = example.from_columns(*(frame[c].to_numpy() for c in example.KEYS + ['value']))
  return {'max_abs_diff': float(np.abs(q['att_output'] - q['pi']).max())}


SPEC = common.Spec(
    NAME, [common.Table(NAME, plots.KEYS, summary),
           common.Table(POINTS_NAME, plots.POINT_KEYS),
           common.Table(EXAMPLE_NAME, example.KEYS, example_summary, resume=False)],
    FLAG_NAMES, validate, run, plots.plot,
    message=lambda s: (f'max |attention - CCMC| = {s["max_abs_diff"]:.2e} over {s["pairs"]} '
                       f'(W, X) pairs ({"<=" if s["passed"] else "> "} tol {s["tol"]:g})'),
    check=lambda _: trials.failure(*(io.read_csv(p) for p in common.csv_paths(NAME, EXAMPLE_NAME)),
                                   _TOL.value))

if __name__ == '__main__':
  common.run(SPEC, quick=QUICK)
