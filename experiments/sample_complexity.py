"""Sample complexity of learning the CCMC from n IID prompts (paper Sec. 3, Figs. 4 and 6).

For each (K, L) setting and trial: draw A* ~ N(0, scale^2), n_max IID prompts and answers
y ~ pi^X(A*), fit the convex MLE on the first n samples for every n of the grid, and record
||P_hat - P*||_F^2. The asymptotic prediction (1/n) sum_k tr(J_k F_k^+ J_k) is computed per
trial from a Monte-Carlo Fisher information. Trials: ccmc_jax.trials.sample_complexity; figure:
experiments.plots.sample_complexity. Writes results/sample_complexity.csv (one row per
K, L, n, trial) and figures/sample_complexity.{png,pdf}.

  python -m experiments.sample_complexity --K=5,10,20 --n=1000,10000,100000 --trials=20
"""
from __future__ import annotations

import time

from absl import flags

from ccmc_jax import memory
from ccmc_jax import sharding
from ccmc_jax.trials import sample_complexity as trials
from experiments import common
from experiments.plots import sample_complexity as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_list('K', ['5', '10', '20'], 'Vocabulary sizes K (paper Sec. 2), >= 2.')
_L = flags.DEFINE_list('L', ['10'], 'Prompt lengths L (paper Sec. 2), >= 1 (>= 2 with --cross).')
_N = flags.DEFINE_list('n', ['1000', '2154', '4642', '10000', '21544', '46416', '100000'],
                       'Sample sizes n: number of IID (prompt, next token) pairs (Sec. 3).')
_TRIALS = flags.DEFINE_integer('trials', 20, 'Independent trials per (K, L, n), >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Ground truth A* ~ N(0, scale^2); scale > 0.')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge (ridge/2)||A||^2 on the NLL; >= 0.')
_CROSS = flags.DEFINE_bool('cross', False, 'Cross-attention: the query is not a key.')
_PROMPTS = flags.DEFINE_string('prompts', 'uniform', 'Prompt distribution: uniform, two_group.')
_L_SWEEP = flags.DEFINE_list('L_sweep', [], 'Extra prompt lengths run at K = --K_for_L only.')
_K_FOR_L = flags.DEFINE_integer('K_for_L', 10, 'Vocabulary size of the --L_sweep settings.')
_MC = flags.DEFINE_integer('mc_samples', 50000,
                           'Monte-Carlo prompts per trial for the Fisher information; >= 1000.')
_PROCESS_COUNT = flags.DEFINE_integer(
    'process_count', 1, 'Processes (e.g. hosts) the trials are split over; 1 <= it <= trials. '
    'Each runs its block of trials (ccmc_jax.sharding.process_slice) into its own results_dir; '
    'the concatenated CSVs equal the one-process sweep.')
_PROCESS_INDEX = flags.DEFINE_integer('process_index', 0,
                                      'This process: 0 <= process_index < process_count.')

NAME = 'sample_complexity'
KEYS = plots.KEYS
FLAG_NAMES = ['K', 'L', 'n', 'trials', 'scale', 'ridge', 'cross', 'prompts', 'L_sweep',
              'K_for_L', 'mc_samples', 'process_count', 'process_index']
QUICK = {'K': ['3', '5'], 'n': ['300', '1000', '3000'], 'trials': 4, 'mc_samples': 5000,
         'L_sweep': []}


def settings():
  """The sweep's settings: K x L, plus (K_for_L, L) for every L of --L_sweep."""
  pairs = [(int(k), int(l)) for k in _K.value for l in _L.value]
  pairs += [(_K_FOR_L.value, int(l)) for l in _L_SWEEP.value]
  ns = tuple(sorted({int(v) for v in _N.value}))
  return [trials.Setting(K, L, ns, _MC.value, _SCALE.value, _CROSS.value, _PROMPTS.value,
                         _RIDGE.value) for K, L in dict.fromkeys(pairs)]


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 1000)
  common.check_int('L', _L.value, 2 if _CROSS.value else 1)
  common.check_int('n', _N.value, 1)
  common.check_int('trials', _TRIALS.value, 1)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  common.check_choice('prompts', _PROMPTS.value, ['uniform', 'two_group'])
  if _L_SWEEP.value:
    common.check_int('L_sweep', _L_SWEEP.value, 2 if _CROSS.value else 1)
    common.check_int('K_for_L', _K_FOR_L.value, 2, 1000)
  common.check_int('mc_samples', _MC.value, 1000)
  common.check_int('process_count', _PROCESS_COUNT.value, 1, _TRIALS.value)
  common.check_int('process_index', _PROCESS_INDEX.value, 0, _PROCESS_COUNT.value - 1)
  n_max = max(int(v) for v in _N.value)
  for s in settings():
    common.check_memory(memory.sample_complexity(s.K, s.L, n_max, _TRIALS.value, _MC.value))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


def run(_, results):
  """Every (K, L, n) cell not yet in the results, written after each one."""
  results, seed, start = results[NAME], flags.FLAGS.seed, time.time()
  todo = {s: [n for n in s.ns if not results.done({'K': s.K, 'L': s.L, 'n': n})]
          for s in settings()}
  total = sum(len(s.ns) for s in todo)
  done = total - sum(len(v) for v in todo.values())
  mine = sharding.process_slice(_TRIALS.value, _PROCESS_INDEX.value, _PROCESS_COUNT.value)
  for s, n, columns in trials.sweep(list(todo), seed, _TRIALS.value, todo, mine):
    done += 1
    results.add({'K': s.K, 'L': s.L, 'n': n, 'trial': mine, 'seed': seed,
                 'cross': int(s.cross), 'prompts': s.prompts, **columns})
    common.progress(f'{NAME}: K={s.K} L={s.L} n={n} ({done}/{total}) '
                    f'mean error {columns["error"].mean():.3g}', start)


SPEC = common.Spec(NAME, [common.Table(NAME, KEYS, trials.summary)], FLAG_NAMES, validate, run,
                   plots.plot)

if __name__ == '__main__':
  common.run(SPEC, quick=QUICK)
