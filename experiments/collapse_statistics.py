"""Collapse statistics over many seeds (beyond the paper; paper Sec. 4, Fig. 5).

One growing-context trajectory of T tokens per seed, x_{t+1} ~ pi^{X_t}, from X0 = a random
permutation of all K tokens followed by L0 - K uniform tokens (L0 < K: the first L0 tokens of
the permutation). Variant `random`: P = softmax(A), A ~ N(0, scale^2); variant `zero_diag`: the
same A without self-loops. Seed i of a (K, L0) shape uses fold_in(fold_in(fold_in(seed, K), L0),
i) for every scale and both variants (common random numbers). Trials, summaries and the exact
zero-diagonal bound: ccmc_jax.trials.collapse_statistics.

Per seed, from the running frequencies f_t after step t = 1..T: winners (tokens with f_T above
--winner_threshold), top1, top2 (largest / two largest final frequencies), collapse_time (the
first t after which the set of tokens above the threshold stays the final set; ~T: not
settled), max_final_freq = top1.

Three sweeps, each for every variant: `K` over --K (L0 = K, scale = 1), `L0` over --L0
(K = --K_base, scale = 1) and `scale` over --scale (K = L0 = --K_base). One compilation per K.

Outputs: results/collapse_statistics.csv (sweep, K, L0, scale, variant, seed, winners, top1,
top2, collapse_time, max_final_freq, T, winner_threshold), figures/collapse_statistics.{png,pdf}.

  python -m experiments.collapse_statistics --K=4,8,16,32 --T=5000 --seeds=200
"""
from __future__ import annotations

from absl import flags

from ccmc_jax import memory
from ccmc_jax.trials import collapse_statistics as trials
from experiments import common
from experiments.plots import collapse_statistics as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_list('K', ['4', '8', '16', '32'],
                       'Vocabulary sizes K of the K sweep (L0 = K, scale = 1), each >= 2.')
_L0 = flags.DEFINE_list('L0', ['4', '8', '32', '128'],
                        'Initial prompt lengths L0 of the L0 sweep (K = --K_base), each >= 2.')
_SCALE = flags.DEFINE_list('scale', ['0.25', '0.5', '1', '2', '4'],
                           'Score scales of the scale sweep, A ~ N(0, scale^2) (K = L0 = '
                           '--K_base); each in (0, 50].')
_K_BASE = flags.DEFINE_integer('K_base', 8, 'K of the L0 and scale sweeps (also their L0 in '
                               'the scale sweep), >= 2.')
_T = flags.DEFINE_integer('T', 5000, 'Tokens generated per trajectory (time horizon), >= 2.')
_SEEDS = flags.DEFINE_integer('seeds', 200, 'Trajectories per setting and variant, >= 1.')
_VARIANTS = flags.DEFINE_list('variants', ['random', 'zero_diag'],
                              'Variants: random (P = softmax(A)), zero_diag (no self-loops).')
_THRESH = flags.DEFINE_float(
    'winner_threshold', 0.1, 'A winner token has final frequency above this, in (0, 1). '
    'collapse_time = first t after which the set of tokens with running frequency above it '
    'stays equal to the final winner set.')
_BATCH = flags.DEFINE_integer('batch', 50, 'Seeds vectorised at once (memory: batch x T x K '
                              'running frequencies), >= 1.')

NAME = 'collapse_statistics'
FLAG_NAMES = ['K', 'L0', 'scale', 'K_base', 'T', 'seeds', 'variants', 'winner_threshold']


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 1000)
  # L0 >= 2: X0 then holds two distinct tokens, so a zero-diagonal chain can always move.
  common.check_int('L0', _L0.value, 2, 10 ** 5)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_int('K_base', _K_BASE.value, 2, 1000)
  common.check_int('T', _T.value, 2, 10 ** 7)
  common.check_int('seeds', _SEEDS.value, 1, 10 ** 6)
  if not _VARIANTS.value:
    raise common.FlagError('--variants is empty: allowed values are random, zero_diag')
  common.check_choice('variants', _VARIANTS.value, trials.VARIANTS)
  common.check_float('winner_threshold', _THRESH.value, 0, 1, lo_open=True)
  common.check_int('batch', _BATCH.value, 1)
  K_max = max([int(k) for k in _K.value] + [_K_BASE.value])
  pads = trials.prompt_pads(trials.settings(_K.value, _L0.value, _SCALE.value, _K_BASE.value))
  K_p = max(pads, key=lambda k: k * pads[k])  # the compilation with the largest prompts
  k_flag = 'K_base' if K_p == _K_BASE.value else 'K'
  prompt = (('L0' if pads[K_p] in [int(l) for l in _L0.value] else k_flag, pads[K_p]),
            (k_flag, K_p))
  common.check_memory(memory.collapse_statistics(K_max, _T.value, _BATCH.value, _SEEDS.value,
                                                 prompt))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


def run(_, results):
  """Every (sweep cell, variant) not yet in the CSV, written as each finishes."""
  table = results[NAME]
  cells = trials.settings(_K.value, _L0.value, _SCALE.value, _K_BASE.value)
  for i, cols in enumerate(trials.run_cells(flags.FLAGS.seed, cells, _VARIANTS.value, _T.value,
                                            _SEEDS.value, _THRESH.value, _BATCH.value,
                                            table.done)):
    table.add(cols)
    common.progress(f'{NAME}: {cols["sweep"]} sweep K={cols["K"]} L0={cols["L0"]} scale='
                    f'{cols["scale"]:g} {cols["variant"]} ({i + 1} cells): mean winners '
                    f'{cols["winners"].mean():.2f}, top-1 {cols["top1"].mean():.3f}, mean '
                    f'collapse time {cols["collapse_time"].mean():.0f}', table.start)


SPEC = common.Spec(
    name=NAME, flag_names=FLAG_NAMES, validate=validate, run=run, plot=plots.plot,
    tables=[common.Table(NAME, plots.KEYS, lambda frame: {'summary': trials.summary(frame)})])

if __name__ == '__main__':
  common.run(SPEC, quick={'K': ['8'], 'L0': ['8', '32'], 'scale': ['0.5', '2'], 'T': 300,
                          'seeds': 16})
