"""Learning W from one trajectory vs from IID prompts (paper Sec. 4: one trajectory collapses).

For each trial: A* ~ N(0, scale^2) (P* = softmax(A*)), an initial prompt X0 of length L0 (a
random permutation of all K tokens followed by L0 - K uniform tokens), and
  single: one growing-context trajectory of T_max tokens from X0; its first T steps are the T
          samples (counts of the context, query x_{t-1}, next token x_t);
  iid:    T_max IID pairs (uniform prompt of length L0, y ~ pi^X(A*)).
Both are fit by the convex MLE on their first T samples, for every T of the grid (trials and
fits: ccmc_jax.trials.trajectory_learning). Recorded: ||P_hat - P*||_F^2, the rows of P visited
as a query, and per row the visits and the row error ||P_hat[k] - P*[k]||^2.

Outputs: results/trajectory_learning.csv (source, K, L0, T, trial, seed, error, visited_rows,
min_visits, ...), results/trajectory_learning_rows.csv (per-row visits and errors, long
format), figures/trajectory_learning.{png,pdf}.

  python -m experiments.trajectory_learning --K=6 --L0=10 --T=100,1000,10000 --trials=20
"""
from __future__ import annotations

from absl import flags

from ccmc_jax import memory
from ccmc_jax.trials import trajectory_learning as trials
from experiments import common
from experiments.plots import trajectory_learning as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_integer('K', 6, 'Vocabulary size K (paper Sec. 2), >= 2.')
_L0 = flags.DEFINE_integer('L0', 10, 'Initial prompt length L0 of the trajectory, also the '
                           'length L of the IID prompts (paper Sec. 3-4), >= 1.')
_T = flags.DEFINE_list('T', ['100', '316', '1000', '3162', '10000'],
                       'Sample sizes T: trajectory length (single) = number of IID prompts '
                       '(iid); each >= 1.')
_TRIALS = flags.DEFINE_integer('trials', 20, 'Independent trials (A*, X0, data) per T, >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Ground truth A* ~ N(0, scale^2); scale > 0.')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge (ridge/2)||A||^2 on the NLL; >= 0.')

NAME, ROWS_NAME = 'trajectory_learning', 'trajectory_learning_rows'
FLAG_NAMES = ['K', 'L0', 'T', 'trials', 'scale', 'ridge']


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 1000)
  common.check_int('L0', _L0.value, 1, 10 ** 5)
  common.check_int('T', _T.value, 1, 10 ** 7)
  common.check_int('trials', _TRIALS.value, 1, 10 ** 4)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  T_max, K = max(int(t) for t in _T.value), _K.value
  common.check_memory(memory.trajectory_learning(K, _L0.value, T_max, _TRIALS.value))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


def run(_, results):
  """Fit both sources at every T of the grid, writing both tables after each T."""
  K, L0 = _K.value, _L0.value
  table, rows = results[NAME], results[ROWS_NAME]
  Ts = sorted({int(t) for t in _T.value})
  if all(table.done({'K': K, 'L0': L0, 'T': T}) for T in Ts):
    return
  for T, cols, row_cols in trials.run(flags.FLAGS.seed, K, L0, Ts, _TRIALS.value, _SCALE.value,
                                      _RIDGE.value):
    if table.done({'K': K, 'L0': L0, 'T': T}):
      continue
    with results.unit():  # both tables or neither (--resume)
      table.add(cols)
      rows.add(row_cols)
    err, single = cols['error'], cols['source'] == 'single'
    common.progress(f'{NAME}: T={T}: mean error single {err[single].mean():.3g}, iid '
                    f'{err[~single].mean():.3g}, rows visited (single) '
                    f'{cols["visited_rows"][single].mean():.2f}/{K}', table.start)


SPEC = common.Spec(
    name=NAME, flag_names=FLAG_NAMES, validate=validate, run=run, plot=plots.plot,
    tables=[common.Table(NAME, plots.KEYS, lambda frame: {'summary': trials.summary(frame)}),
            common.Table(ROWS_NAME, plots.ROW_KEYS)])

if __name__ == '__main__':
  common.run(SPEC, quick={'T': ['100', '1000'], 'trials': 4})
