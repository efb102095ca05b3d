"""Positional encoding: the position-weighted CCMC (paper Definition 2.4 / Lemma 2.5).

With keys e_{x_i} + p_i and position vectors that carry no token identity (C p_i = 0),
attention is a CCMC whose counts are replaced by position weights,
pi^X_k ∝ P[x_L, k] * sum_{i: x_i = k} w_i. (a) Equivalence of attention and the positional
CCMC on random draws, three routes; (b) the joint MLE of (A, b) at every n. Trials:
ccmc_jax.trials.positional_encoding; figure: experiments.plots.positional_encoding. Outputs:

  results/positional_encoding.csv              K, L, cross, n, trial, metric (P_error,
                                               w_error), seed, error, newton_iters, invalid
  results/positional_encoding_weights.csv      ... position (0-indexed), w_true, w_hat
  results/positional_encoding_equivalence.csv  K, L, cross, route, trial, seed, prompts,
                                               max_abs_diff, mean_abs_diff
  figures/positional_encoding.{png,pdf}

  python -m experiments.positional_encoding --K=5 --L=8 --n=1000,10000,100000 --trials=20
"""
from __future__ import annotations

import time

from absl import flags
import numpy as np

from ccmc_jax import io
from ccmc_jax import memory
from ccmc_jax import positional
from ccmc_jax.trials import positional_encoding as trials
from experiments import common
from experiments.plots import positional_encoding as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_integer('K', 5, 'Vocabulary size K of the MLE part (paper Sec. 2), in [2, 50].')
_L = flags.DEFINE_integer('L', 8, 'Prompt length L of the MLE part (paper Sec. 2), >= 3: with '
                          'L = 2 the query-position weight is confounded with diag(A).')
_N = flags.DEFINE_list('n', ['1000', '2154', '4642', '10000', '21544', '46416', '100000'],
                       'Sample sizes n: IID (prompt, next token) pairs (paper Sec. 3).')
_TRIALS = flags.DEFINE_integer('trials', 20, 'Independent ground truths and data sets, >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Scores A* ~ N(0, scale^2) and attention weights '
                            'W ~ N(0, scale^2); in (0, 50]. Route embedding (float32 P_eff) holds '
                            '--tol=1e-5 up to about 5; beyond, the run fails (exit 1).')
_BIAS = flags.DEFINE_string('bias', 'random', 'Ground-truth position log-weights b*: random '
                            '(b_i ~ N(0, b_scale^2)) or recency (linear ramp -b_scale..b_scale).')
_B_SCALE = flags.DEFINE_float('b_scale', 1.0, 'Scale of b* (w*_i = exp(b*_i)), MLE part only; '
                              'in (0, 10].')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge (ridge/2)(||A||^2 + ||b||^2) on the NLL; >= 0.')
_CROSS = flags.DEFINE_bool('cross', False, 'MLE part with cross-attention (the query is not a '
                           'key; b* then has L - 1 free entries).')
_EQ_K = flags.DEFINE_list('eq_K', ['3', '5', '10'], 'Vocabulary sizes K of the equivalence '
                          'check, in [2, 200].')
_EQ_L = flags.DEFINE_list('eq_L', ['3', '20'], 'Prompt lengths L of the equivalence check, '
                          'in [2, 1000].')
_EQ_ATT = flags.DEFINE_list('eq_attention', ['self', 'cross'], 'Attention kinds of the '
                            'equivalence check: self and/or cross.')
_EQ_TRIALS = flags.DEFINE_integer('eq_trials', 100, 'Draws of (W, E, positions, A, b) per '
                                  'equivalence cell, >= 1.')
_EQ_PROMPTS = flags.DEFINE_integer('eq_prompts', 20, 'Uniform prompts X per draw, >= 1: a cell '
                                   'compares eq_trials * eq_prompts triples per route.')
_D_POS = flags.DEFINE_integer('d_pos', 4, 'Extra embedding dimensions holding the positions '
                              '(d = K + d_pos), in [1, 100].')
_POS_SCALE = flags.DEFINE_float('pos_scale', 1.0, 'Position embeddings g_i ~ N(0, pos_scale^2) '
                                '(and bias route b); in (0, 10]. Score round-off grows with it: '
                                '--tol=1e-5 holds up to about 3 (else exit 1).')
_TOL = flags.DEFINE_float('tol', 1e-5, 'Tolerance on max |attention - positional CCMC| of every '
                          'route; > 0. A route above it or NaN: FAILED, exit 1.')

NAME = 'positional_encoding'
WEIGHTS_NAME, EQ_NAME = NAME + '_weights', NAME + '_equivalence'
FLAG_NAMES = ['K', 'L', 'n', 'trials', 'scale', 'bias', 'b_scale', 'ridge', 'cross', 'eq_K',
              'eq_L', 'eq_attention', 'eq_trials', 'eq_prompts', 'd_pos', 'pos_scale', 'tol']
QUICK = {'K': 3, 'L': 4, 'n': ['300', '1000', '3000'], 'trials': 3, 'eq_K': ['3'],
         'eq_L': ['3', '6'], 'eq_trials': 10, 'eq_prompts': 10}


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 50)
  common.check_int('L', _L.value, 3, 1000)
  common.check_int('n', _N.value, 1, 10 ** 7)
  common.check_int('trials', _TRIALS.value, 1)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_choice('bias', _BIAS.value, positional.BIAS_KINDS)
  common.check_float('b_scale', _B_SCALE.value, 0, 10, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  common.check_int('eq_K', _EQ_K.value, 2, 200)
  common.check_int('eq_L', _EQ_L.value, 2, 1000)
  common.check_choice('eq_attention', _EQ_ATT.value, ['self', 'cross'])
  if not _EQ_ATT.value:
    raise common.FlagError('--eq_attention is empty: allowed values are self, cross')
  common.check_int('eq_trials', _EQ_TRIALS.value, 1)
  common.check_int('eq_prompts', _EQ_PROMPTS.value, 1)
  common.check_int('d_pos', _D_POS.value, 1, 100)
  common.check_float('pos_scale', _POS_SCALE.value, 0, 10, lo_open=True)
  common.check_float('tol', _TOL.value, 0, lo_open=True)
  n_max, L = max(int(v) for v in _N.value), _L.value
  for Ke, Le, _ in trials.eq_cells(_EQ_K.value, _EQ_L.value, _EQ_ATT.value):
    common.check_memory(memory.positional_encoding(_K.value, L, n_max, _TRIALS.value, Ke, Le,
                                                   _EQ_TRIALS.value, _EQ_PROMPTS.value,
                                                   _D_POS.value))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


def run(_, results):
  """(a) every equivalence cell not yet in the results; then (b) unless already there."""
  seed, start, trial_count = flags.FLAGS.seed, time.time(), _TRIALS.value
  cells = trials.eq_cells(_EQ_K.value, _EQ_L.value, _EQ_ATT.value)
  pairs = list(dict.fromkeys((K, L) for K, L, _ in cells))
  sweep = trials.EqSweep(max(K for K, _ in pairs), max(L for _, L in pairs), _D_POS.value,
                         _EQ_PROMPTS.value, _SCALE.value, _POS_SCALE.value)
  for c, (K, L) in enumerate(pairs):
    crosses = tuple(cr for Kc, Lc, cr in cells if (Kc, Lc) == (K, L)
                    and not results[EQ_NAME].done({'K': K, 'L': L, 'cross': int(cr)}))
    if crosses:
      out = trials.run_eq_cell(K, L, crosses, sweep, trials.eq_keys(seed, K, L, _EQ_TRIALS.value))
      results[EQ_NAME].add(trials.eq_columns(K, L, crosses, out, seed, sweep.prompts))
      common.progress(f'{NAME}: equivalence K={K} L={L} ({c + 1}/{len(pairs)}): '
                      f'{_EQ_TRIALS.value * sweep.prompts} triples per route and attention kind, '
                      f'max |attention - CCMC| = {out["max_abs_diff"].max():.2e}', start)
  s = trials.FitSetting(_K.value, _L.value, tuple(sorted({int(v) for v in _N.value})),
                        _CROSS.value, _SCALE.value, _BIAS.value, _B_SCALE.value, _RIDGE.value)
  if results[NAME].done({'K': s.K, 'L': s.L, 'cross': int(s.cross)}):
    return
  generated = trials.generate(s, trials.fit_keys(seed, s, trial_count))
  common.progress(f'{NAME}: sampled {trial_count} x {max(s.ns)} (prompt, next token) pairs', start)
  out = {k: np.asarray(v) for k, v in trials.run_fit(s, generated).items()}
  assert not out['invalid'].any(), 'an answer absent from its prompt'  # by the sampler
  means = {m: ' '.join(f'{v:.3g}' for v in out[m].mean(0)) for m in trials.METRICS}
  common.progress(f'{NAME}: K={s.K} L={s.L} n={" ".join(map(str, s.ns))}: mean P_error '
                  f'{means["P_error"]}, mean w_error (normalised w) {means["w_error"]}', start)
  rows, weight_rows = trials.fit_columns(s, out, seed)
  with results.unit():  # both tables or neither (--resume)
    results[WEIGHTS_NAME].add(weight_rows)
    results[NAME].add(rows)


SPEC = common.Spec(
    NAME, [common.Table(NAME, plots.KEYS, lambda f: {'slopes': trials.slopes(f)}),
           common.Table(WEIGHTS_NAME, plots.WEIGHT_KEYS),
           common.Table(EQ_NAME, plots.EQ_KEYS,
                        lambda f: trials.eq_summary_dict(f, _TOL.value))],
    FLAG_NAMES, validate, run, plots.plot,
    message=lambda s: f'slopes {", ".join(f"{k} {v:.2f}" for k, v in s["slopes"].items())}',
    check=lambda _: trials.eq_failure(io.read_csv(common.csv_paths(EQ_NAME)[0]), _TOL.value))

if __name__ == '__main__':
  common.run(SPEC, quick=QUICK)
