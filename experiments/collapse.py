"""Distribution collapse along one trajectory (paper Sec. 4, Fig. 5 middle and right).

A trajectory starts from X_0 (a random permutation of all K tokens unless --X0 is given) and
appends x_{t+1} ~ pi^{X_t}. Variant `random`: P = softmax(A), A ~ N(0, scale^2); variant
`zero_diag`: the same P without self-loops (ccmc_jax.trials.collapse). Outputs:

  results/collapse_seeds.csv  seed sweep: variant, seed, top1, top2 (final frequency shares),
                              winners (tokens above --winner_threshold)
  results/collapse.csv        the example trajectory per variant: variant, seed, t, token,
                              frequency (count / current length), emitted (x_t == token)
  figures/collapse.{png,pdf}

The example is the sweep's seed whose final top-1 share (random P) is the sweep's median; the
zero-diagonal example uses the same seed (same A). The GPT-2 panel of paper Fig. 5 (left) is
experiments.gpt2_repetition.

  python -m experiments.collapse --K=6 --T=5000 --seeds=200
"""
from __future__ import annotations

from absl import flags
import numpy as np
import pandas as pd

from ccmc_jax import memory
from ccmc_jax import model
from ccmc_jax.trials import collapse as trials
from experiments import common
from experiments.plots import collapse as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_integer('K', 6, 'Vocabulary size K (paper Fig. 5 uses 6), >= 2.')
_T = flags.DEFINE_integer('T', 5000, 'Tokens generated per trajectory (time horizon), >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Scores A ~ N(0, scale^2) of the random P; > 0.')
_SEEDS = flags.DEFINE_integer('seeds', 200, 'Trajectories per variant in the seed sweep, >= 1.')
_VARIANTS = flags.DEFINE_list('variants', ['random', 'zero_diag'],
                              'Variants: random (P = softmax(A)), zero_diag (no self-loops).')
_X0 = flags.DEFINE_list('X0', [], 'Initial prompt, 0-indexed tokens (default: a random '
                        'permutation of all K tokens per seed).')
_WINDOW = flags.DEFINE_integer('window', 0, 'Context window L (0: growing context).')
_THRESH = flags.DEFINE_float('winner_threshold', 0.1,
                             'A winner token has final frequency above this, in (0, 1).')
_P_FILE = flags.DEFINE_string('P_file', None, 'Optional K x K row-stochastic P (.npy or .csv) '
                              'used for the example trajectories instead of a random one.')
_SNAPSHOTS = flags.DEFINE_integer('window_snapshots', 6, 'Number of 10-token windows drawn.')

NAME, SEEDS_NAME = 'collapse', 'collapse_seeds'
FLAG_NAMES = ['K', 'T', 'scale', 'seeds', 'variants', 'X0', 'window', 'winner_threshold',
              'P_file']


def load_P(path, K):
  """A user-given base chain: .npy or .csv, K x K, row-stochastic (one-line errors)."""
  try:
    P = model.check_stochastic(trials.read_P_file(path, f'--P_file={path}'),
                               name=f'--P_file={path}')
  except ValueError as e:
    raise common.FlagError(str(e)) from None
  if P.shape[0] != K:
    raise common.FlagError(f'--P_file={path} is {P.shape[0]} x {P.shape[0]} but --K={K}')
  row = trials.row_without_off_diagonal_mass(P) if 'zero_diag' in _VARIANTS.value else None
  if row is not None:
    raise common.FlagError(f'--P_file={path}: row {row} has no off-diagonal mass, so the '
                           f'zero_diag variant (no self-loops) has no next token after token '
                           f'{row}: give every row mass off the diagonal, or --variants=random')
  return P


def validate():
  """One-line errors for bad flags, before any work; returns the user's P (or None)."""
  common.check_int('K', _K.value, 2, 10000)
  common.check_int('T', _T.value, 1, 10 ** 7)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_int('seeds', _SEEDS.value, 1)
  common.check_choice('variants', _VARIANTS.value, trials.VARIANTS)
  if not _VARIANTS.value:
    raise common.FlagError('--variants is empty: allowed values are random, zero_diag')
  if _X0.value:
    common.check_int('X0', _X0.value, 0, _K.value - 1)
  common.check_int('window', _WINDOW.value, 0)
  common.check_float('winner_threshold', _THRESH.value, 0, 1, lo_open=True)
  common.check_int('window_snapshots', _SNAPSHOTS.value, 1, 50)
  if 'zero_diag' in _VARIANTS.value:
    error = trials.zero_diag_context_error([int(x) for x in _X0.value], _WINDOW.value)
    if error:
      raise common.FlagError(error)
  common.check_memory(memory.collapse(_K.value, _T.value, _SEEDS.value, len(_VARIANTS.value),
                                      _WINDOW.value))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return load_P(_P_FILE.value, _K.value) if _P_FILE.value else None


def run(P_given, results):
  """The seed sweep per variant, then the example trajectories (the sweep's median seed)."""
  seed, variants = flags.FLAGS.seed, [v for v in trials.VARIANTS if v in _VARIANTS.value]
  setting = dict(K=_K.value, T=_T.value, scale=_SCALE.value, window=_WINDOW.value or None,
                 X0=_X0.value)
  sweep, example = results[SEEDS_NAME], results[NAME]
  new = {}  # the sweeps and examples are all computed before any is written: an example
  for variant in variants:  # that meets a 0/0 context (--P_file) leaves no file behind
    if not sweep.done({'variant': variant}):
      cols = trials.seed_sweep(seed, _SEEDS.value, zero_diag=variant == 'zero_diag',
                               threshold=_THRESH.value, **setting)
      new[variant] = pd.DataFrame({'variant': variant, 'seed': cols.pop('seed'),
                                   'root_seed': seed, 'K': _K.value, 'T': _T.value, **cols})
      common.progress(f'{NAME}: {variant}: {_SEEDS.value} seeds, mean top-1 share '
                      f'{cols["top1"].mean():.3f}, top-2 {cols["top2"].mean():.3f}', sweep.start)
  frame = pd.concat([sweep.frame, *new.values()], ignore_index=True)
  index = trials.sweep_summary(frame)[variants[0]]['median_seed']
  A = None
  if P_given is not None:
    with np.errstate(divide='ignore'):
      A = np.log(P_given).astype(np.float32)  # softmax(log P) = P
  todo = [v for v in variants if not example.done({'variant': v})]
  try:
    cols = {v: trials.example(seed, index, zero_diag=v == 'zero_diag', A=A, **setting)
            for v in todo}
  except trials.ZeroMassError as e:
    raise common.FlagError(f'--P_file={_P_FILE.value}: {e}; its zeros leave a context with no '
                           f'next token (give P without such zeros, or another --X0/--window)')
  for rows in new.values():
    sweep.add(rows)
  for variant in todo:
    example.add({'variant': variant, 'seed': index, **cols[variant]})
  common.progress(f'{NAME}: example trajectories: seed {index} (median top-1 share of '
                  f'{variants[0]})')


SPEC = common.Spec(
    name=NAME, flag_names=FLAG_NAMES, validate=validate, run=run,
    tables=[common.Table(SEEDS_NAME, plots.SEED_KEYS, trials.sweep_summary),
            common.Table(NAME, plots.KEYS, lambda frame: {
                'example_seed': int(frame['seed'].iloc[0]), 'example_rule': trials.EXAMPLE_RULE})],
    plot=lambda seeds_csv, csv: plots.plot(csv, seeds_csv, _SNAPSHOTS.value))

if __name__ == '__main__':
  common.run(SPEC, quick={'T': 500, 'seeds': 20})
