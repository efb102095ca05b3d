"""Benchmark: our jit+vmap sample-complexity sweep vs plain per-trial implementations.

On the default sample-complexity settings (K = 5, 10, 20; L = 10; n = 1e3 ... 1e5; 20 trials)
it times, on the same data:

  (a) ours: ``ccmc_jax.trials.sample_complexity``'s data and fit cell, jit(vmap over trials), one compilation
      per K serving every n (batched Newton, ``ccmc_jax.fit.fit_scores``); compile time apart;
  (b) SciPy: NumPy objective + analytic gradient, ``scipy.optimize.minimize(L-BFGS-B)``, one
      trial and one n at a time (``benchmarks.reference.fit_scipy``);
  (c) JAX loop: a Python loop of jitted optax L-BFGS steps, one trial and one n at a time, no
      vmap (``benchmarks.reference.fit_jax_loop``);

checks that the three reach the same estimates (max |P_a - P_b| over every fitted matrix), and
prints seconds, time per trial (one trial = every n of the grid), samples x Newton iterations per
second, and the ratios. The references are slow, so they run on ``--ref_trials`` trials per K and
their per-trial time is extrapolated to the whole sweep. With ``--whole_command`` it also times
``python -m experiments.sample_complexity`` end to end (start-up and compilation included) and
compares it with the SciPy time of the same sweep.

  python -m benchmarks.run                    # ~3 minutes on 2 CPU cores
  python -m benchmarks.run --K=5 --trials=4 --ref_trials=1 --nowhole_command   # seconds

Writes results/benchmark.csv (one row per K and implementation) and its .meta.json.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from benchmarks import reference
from ccmc_jax import fit
from ccmc_jax import io
from ccmc_jax.trials import sample_complexity as sc_trials
from experiments import common
from experiments import sample_complexity as sc

flags.adopt_module_key_flags(common)
flags.adopt_module_key_flags(sc)  # --K, --L, --n, --trials, --ridge of the sweep

_REF_TRIALS = flags.DEFINE_integer('ref_trials', 2,
                                   'Trials per K run by the slow references (b) and (c); >= 1.')
_WHOLE = flags.DEFINE_bool('whole_command', True,
                           'Also time `python -m experiments.sample_complexity` end to end.')
_ATOL = flags.DEFINE_float('atol', 2e-3, 'Largest allowed |P_ours - P_ref| entry; > 0.')

NAME = 'benchmark'
KEYS = ['K', 'implementation']


def _timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def _block(tree):
  return jax.block_until_ready(tree)


def bench_K(K, L, ns, trials, ref_trials, ridge):
  """Rows for one K: ours (all trials) and both references (``ref_trials`` trials)."""
  setting = sc_trials.Setting(K, L, tuple(ns), mc_samples=1000)
  (A, data, _), t_data = _timed(lambda k: _block(sc_trials.generate(setting, k)),
                                sc_trials.keys(0, setting, trials))
  capacity = sc_trials.capacity(data.query, K)

  group = jax.jit(jax.vmap(lambda d: fit.group_by_query(d, K, capacity)[0]))

  def cell(grouped, n):
    res = fit.fit_grouped(fit.restrict(grouped, n), ridge=ridge)
    return jax.nn.softmax(res.A_hat, -1), res.iters

  compiled = jax.jit(jax.vmap(cell, in_axes=(0, None)))
  start = time.perf_counter()
  grouped = jax.eval_shape(group, data)
  group = group.lower(data).compile()
  lowered = compiled.lower(grouped, jnp.int32(ns[0])).compile()
  t_compile = time.perf_counter() - start
  grouped, t_ours = _timed(lambda: _block(group(data)))
  P_ours, iters = {}, 0.0
  for n in ns:
    (P, it), t = _timed(lambda n=n: _block(lowered(grouped, jnp.int32(n))))
    P_ours[n], t_ours = np.asarray(P), t_ours + t
    iters += n * float(np.asarray(it).mean())
  counts, query, y = (np.asarray(x) for x in (data.counts, data.query, data.y))
  rows = [dict(K=K, implementation='ours (jit+vmap Newton)', trials=trials,
               seconds=t_ours, compile_seconds=t_compile, data_seconds=t_data,
               seconds_per_trial=t_ours / trials,
               samples_iters_per_second=iters * trials / t_ours, max_abs_P_diff=0.0)]
  for name, fn in (('scipy L-BFGS-B (per trial, per n)', reference.fit_scipy),
                   ('jax loop L-BFGS (per trial, per n, no vmap)', reference.fit_jax_loop)):
    total, worst, steps = 0.0, 0.0, 0
    for i in range(ref_trials):
      for n in ns:
        (A_ref, s), t = _timed(fn, counts[i], query[i], y[i], n, K, ridge)
        total, steps = total + t, steps + s
        P_ref = np.exp(A_ref - A_ref.max(1, keepdims=True))
        P_ref /= P_ref.sum(1, keepdims=True)
        worst = max(worst, float(np.abs(P_ref - P_ours[n][i]).max()))
    rows.append(dict(K=K, implementation=name, trials=ref_trials, seconds=total,
                     compile_seconds=np.nan, data_seconds=np.nan,
                     seconds_per_trial=total / ref_trials, samples_iters_per_second=np.nan,
                     max_abs_P_diff=worst, iterations_per_fit=steps / (ref_trials * len(ns))))
  return rows


def whole_command():
  """Wall times of the default experiment end to end in a fresh interpreter: first with an
  empty compilation cache (cold: every XLA compilation paid, as on a fresh machine), then again
  with the cache that run filled (warm: what a user rerunning with other flags sees)."""
  times = []
  with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, CCMC_JAX_CACHE=os.path.join(tmp, 'cache'))
    for _ in range(2):
      start = time.perf_counter()
      subprocess.run([sys.executable, '-m', 'experiments.sample_complexity',
                      f'--results_dir={tmp}', f'--figures_dir={tmp}'], check=True, env=env)
      times.append(time.perf_counter() - start)
  return times


def main(_):
  if flags.FLAGS.quick:
    for name, value in {'K': ['5'], 'trials': 4, 'ref_trials': 1, 'whole_command': False}.items():
      if not flags.FLAGS[name].present:
        flags.FLAGS[name].value = value
  Ks = [int(k) for k in flags.FLAGS.K]
  common.check_int('K', Ks, 2, 1000)
  common.check_int('L', flags.FLAGS.L, 1)
  common.check_int('n', flags.FLAGS.n, 1)
  common.check_int('trials', flags.FLAGS.trials, 1)
  common.check_int('ref_trials', _REF_TRIALS.value, 1, flags.FLAGS.trials)
  common.check_float('atol', _ATOL.value, 0, lo_open=True)
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  # The experiments' XLA options, but no persistent compilation cache: compile_seconds is a
  # true (cold) XLA compilation.
  common.setup_jax(use_cache=False)
  L, ns = int(flags.FLAGS.L[0]), sorted(int(n) for n in flags.FLAGS.n)
  trials, start = flags.FLAGS.trials, time.time()
  rows = []
  for i, K in enumerate(Ks):
    rows += bench_K(K, L, ns, trials, _REF_TRIALS.value, flags.FLAGS.ridge)
    common.progress(f'{NAME}: K={K} ({i + 1}/{len(Ks)})', start)
  df = pd.DataFrame(rows)
  ours = df[df.implementation.str.startswith('ours')].set_index('K')['seconds_per_trial']
  df['ratio_vs_ours'] = df['seconds_per_trial'] / df['K'].map(ours)
  extra = {}
  scipy_rows = df[df.implementation.str.startswith('scipy')]
  scipy_total = float((scipy_rows['seconds_per_trial'] * trials).sum())
  ours_total = float(df[df.implementation.str.startswith('ours')]['seconds'].sum())
  extra['fit_ratio_scipy_vs_ours'] = scipy_total / ours_total
  if _WHOLE.value:
    common.progress(f'{NAME}: timing python -m experiments.sample_complexity end to end ...')
    cold, warm = whole_command()
    extra.update(whole_command_cold_seconds=cold, whole_command_warm_seconds=warm,
                 scipy_sweep_seconds=scipy_total, whole_command_cold_ratio=scipy_total / cold,
                 whole_command_warm_ratio=scipy_total / warm)
  df.insert(2, 'L', L)
  io.write_csv(df, os.path.join(flags.FLAGS.results_dir, f'{NAME}.csv'))
  io.write_meta(os.path.join(flags.FLAGS.results_dir, f'{NAME}.meta.json'),
                common.flag_values(['K', 'L', 'n', 'trials', 'ridge', 'ref_trials', 'atol']),
                keys=KEYS, **extra)
  with pd.option_context('display.width', 200, 'display.max_columns', 20):
    print(df.drop(columns=['L']).to_string(index=False, float_format=lambda v: f'{v:.4g}'))
  print(f'\nfit time, whole sweep ({trials} trials x {len(ns)} n per K): ours '
        f'{ours_total:.2f} s, SciPy {scipy_total:.1f} s (extrapolated from {_REF_TRIALS.value} '
        f'trials): ratio {extra["fit_ratio_scipy_vs_ours"]:.0f}x (compile excluded)')
  if _WHOLE.value:
    print(f'whole command: python -m experiments.sample_complexity end to end {cold:.1f} s '
          f'(cold compilation cache) / {warm:.1f} s (warm) vs the SciPy fits alone '
          f'{scipy_total:.1f} s: ratio {scipy_total / cold:.1f}x cold, {scipy_total / warm:.1f}x '
          f'warm')
  worst = float(df['max_abs_P_diff'].max())
  print(f'same estimates: max |P_ours - P_ref| = {worst:.2e} (atol {_ATOL.value:g})')
  if worst > _ATOL.value:
    raise common.FlagError(f'the implementations disagree: max |P diff| {worst:.3g} > '
                           f'--atol={_ATOL.value:g}')


if __name__ == '__main__':
  common.run(main)
