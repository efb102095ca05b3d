"""Vocabulary scaling: the MLE error law K²/n over two decades of K (beyond the paper).

For each K and each ratio n/K², draw trials of (A* ~ N(0, scale^2), n = ratio * K^2 IID uniform
prompts of L token ids with answers y ~ pi^X(A*)), fit the MLE with ccmc_jax.fit_mle and record
||P_hat - P*||_F^2 beside the asymptotic prediction. If error ~ K²/n, error * n / K² is flat in
K and mean(error) * n ∝ K^b with b = 2. Trials: ccmc_jax.trials.vocabulary_scaling (sharded
over local devices); figure: experiments.plots.vocabulary_scaling. Writes
results/vocabulary_scaling.csv (one row per K, n, trial) and figures/vocabulary_scaling.{png,pdf}.

  python -m experiments.vocabulary_scaling --K=8,16,32,64,128,256,512 --n_over_K2=10,30
"""
from __future__ import annotations

import time

from absl import flags

from ccmc_jax import memory
from ccmc_jax.trials import vocabulary_scaling as trials
from experiments import common
from experiments.plots import vocabulary_scaling as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_list('K', ['8', '16', '32', '64', '128', '256', '512'],
                       'Vocabulary sizes K (paper Sec. 2), in [2, 4096].')
_L = flags.DEFINE_integer('L', 10, 'Prompt length L (paper Sec. 2), >= 2 (with one key the '
                          'answer is that key: nothing to learn).')
_RATIO = flags.DEFINE_list('n_over_K2', ['10', '30'],
                           'Sample sizes as n / K^2 (n = round(ratio * K^2) IID prompts), > 0.')
_TRIALS = flags.DEFINE_integer('trials', 32, 'Trials at K = 8; at K: max(min_trials, '
                               'ceil(trials * (8/K)^2)) (the error sums K^2 terms), >= 1.')
_MIN_TRIALS = flags.DEFINE_integer('min_trials', 2, 'Fewest trials at any K, >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Ground truth A* ~ N(0, scale^2); scale > 0.')
_RIDGE = flags.DEFINE_float('ridge', 1e-9, 'Ridge (ridge/2)||A||^2 on the NLL, >= 0; keep ridge * K^2 '
                            '<< 1 (n * ridge is the prior precision of each score).')

NAME = 'vocabulary_scaling'
KEYS = plots.KEYS
FLAG_NAMES = ['K', 'L', 'n_over_K2', 'trials', 'min_trials', 'scale', 'ridge']
QUICK = {'K': ['8', '16'], 'n_over_K2': ['10'], 'trials': 4, 'min_trials': 2}
CELL_SECONDS = {}  # wall time of each cell (in the sidecar, not the CSV: the CSV is exact)


def cells():
  """(ratio, Setting, trials) of every cell, cheapest first."""
  out = [(float(r), trials.Setting(int(K), _L.value, trials.sample_size(int(K), float(r)),
                                   _SCALE.value, _RIDGE.value),
          trials.trials_at(int(K), _TRIALS.value, _MIN_TRIALS.value))
         for K in _K.value for r in _RATIO.value]
  return sorted(out, key=lambda c: (c[1].n * c[2], c[1].K))


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 4096)
  common.check_int('L', _L.value, 2)
  common.check_float('n_over_K2', _RATIO.value, 0, 1e4, lo_open=True)
  common.check_int('trials', _TRIALS.value, 1)
  common.check_int('min_trials', _MIN_TRIALS.value, 1)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  for _, s, t in cells():
    if s.n < 1:
      raise common.FlagError(f'--n_over_K2: n = ratio * K^2 < 1 at K={s.K}: raise the ratio')
    by = ('min_trials', t) if t == _MIN_TRIALS.value else ('trials', _TRIALS.value)
    common.check_memory(memory.vocabulary_scaling(s.K, s.L, s.n, t, by))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


def run(_, results):
  """Every cell not yet in the results, written after each one."""
  results, seed, start = results[NAME], flags.FLAGS.seed, time.time()
  todo = cells()
  for i, (ratio, s, t) in enumerate(todo):
    if results.done({'K': s.K, 'n': s.n}):
      continue
    cell_start = time.time()
    columns = trials.run_cell(s, trials.keys(seed, s, t))
    CELL_SECONDS[f'K={s.K},n={s.n}'] = round(time.time() - cell_start, 2)
    results.add({'K': s.K, 'L': s.L, 'n': s.n, 'n_over_K2': ratio, 'trial': range(t),
                 'seed': seed, **columns})
    common.progress(f'{NAME}: K={s.K} n={s.n} ({i + 1}/{len(todo)}, {t} trials) mean error '
                    f'{columns["error"].mean():.3g}, / predicted '
                    f'{columns["error"].mean() / columns["predicted_error"].mean():.3f}', start)


def summary(frame):
  return {**trials.summary(frame), 'cell_seconds': dict(CELL_SECONDS)}


def message(stats):
  b = ', '.join(f'{k}: b={v:.2f}' for k, v in stats['exponents'].items())
  return f'{b}; {len(stats["failures"])} claim(s) unmet'


SPEC = common.Spec(NAME, [common.Table(NAME, KEYS, summary)], FLAG_NAMES, validate, run,
                   plots.plot, message)

if __name__ == '__main__':
  common.run(SPEC, quick=QUICK)
