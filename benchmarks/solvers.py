"""Which optimiser reaches the CCMC maximum-likelihood optimum fastest: Newton, L-BFGS or Adam?

On one sample-complexity cell (default K = 10, L = 10, n = 1e4, a few trials) it runs

  * ``newton``: ``ccmc_jax.fit.fit_grouped`` (batched damped Newton, one pass over the data per
    iteration), stopped after 1, 2, ... iterations;
  * ``lbfgs``: ``optax.lbfgs`` with its zoom line search on the same objective (``fit.nll``);
  * ``adam lr=...``: ``optax.adam`` at several learning rates;

and measures, for each, the objective gap ``l(A_t) - l*`` in nats per sample (float64, NumPy
reference objective of ``benchmarks.reference``; ``l*`` is the best value any solver or SciPy
L-BFGS-B at ``gtol=1e-10`` reached) after every iteration. It prints the iterations and seconds
each needs to bring the gap below ``--gaps`` (the statistical excess loss of the true parameter
is about ``K(K-1)/(2n)`` nats per sample, 4.5e-3 here), and writes ``results/solvers.csv``.

  python -m benchmarks.solvers          # ~1 minute on 2 CPU cores
"""
from __future__ import annotations

import functools
import os
import time

from absl import flags
import numpy as np

from benchmarks import reference
from experiments import common

flags.adopt_module_key_flags(common)

_K = flags.DEFINE_integer('K', 10, 'Vocabulary size K; >= 2.')
_L = flags.DEFINE_integer('L', 10, 'Prompt length L; >= 1.')
_N = flags.DEFINE_integer('n', 10000, 'Samples n; >= 1.')
_TRIALS = flags.DEFINE_integer('trials', 3, 'Independent data sets; >= 1.')
_STEPS = flags.DEFINE_integer('steps', 2000, 'Iteration budget of the optax solvers; >= 1.')
_NEWTON_STEPS = flags.DEFINE_integer('newton_steps', 12, 'Iteration budget of Newton; >= 1.')
_LRS = flags.DEFINE_list('adam_lr', ['0.01', '0.03', '0.1', '0.3'], 'Adam learning rates; > 0.')
_GAPS = flags.DEFINE_list('gaps', ['1e-4', '1e-6'], 'Objective gaps (nats per sample) to reach.')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge of the objective; >= 0.')

NAME = 'solvers'
KEYS = ['solver', 'trial', 'gap']


@functools.lru_cache(maxsize=None)
def _solvers(K, ridge, steps, lrs):
  """{name: jitted solver}: ``newton(g, iterations)`` returns its iterate after that many
  iterations; each optax solver ``f(g)`` returns all ``steps`` iterates (steps, K, K)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel

  def newton(g, it):
    return fit.fit_grouped(g, ridge=ridge, tol=0.0, max_iter=it).A_hat

  def run_optax(g, opt, is_lbfgs):
    fun = lambda A: fit.nll(A, g, ridge)
    value_and_grad = optax.value_and_grad_from_state(fun)

    def body(carry, _):
      A, state = carry
      if is_lbfgs:
        value, grad = value_and_grad(A, state=state)
        updates, state = opt.update(grad, state, A, value=value, grad=grad, value_fn=fun)
      else:
        updates, state = opt.update(jax.grad(fun)(A), state, A)
      A = optax.apply_updates(A, updates)
      return (A, state), A

    A0 = jnp.zeros((K, K), jnp.float32)
    return jax.lax.scan(body, (A0, opt.init(A0)), None, length=steps)[1]

  solvers = {'newton': jax.jit(newton),
             'lbfgs': jax.jit(functools.partial(run_optax, opt=optax.lbfgs(), is_lbfgs=True))}
  for lr in lrs:
    solvers[f'adam lr={lr:g}'] = jax.jit(
        functools.partial(run_optax, opt=optax.adam(lr), is_lbfgs=False))
  return solvers


def _timed(fn, *args):
  fn(*args).block_until_ready()  # compile (once per data shape)
  start = time.perf_counter()
  out = fn(*args).block_until_ready()
  return out, time.perf_counter() - start


def _traces(K, data, n, ridge, steps, newton_steps, lrs):
  """Per solver: (iterates of shape (budget, K, K), seconds for the whole budget)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit  # pylint: disable=import-outside-toplevel
  capacity = fit.round_capacity(fit.row_capacity(data.query, K, n), 1024)
  g, _ = fit.group_by_query(data, K, capacity, n)
  out = {}
  for name, fn in _solvers(K, ridge, steps, tuple(lrs)).items():
    if name == 'newton':  # the iteration budget is traced: one compilation
      _, seconds = _timed(fn, g, jnp.int32(newton_steps))
      trace = np.stack([np.asarray(fn(g, jnp.int32(i))) for i in range(1, newton_steps + 1)])
    else:
      trace, seconds = _timed(fn, g)
    out[name] = (np.asarray(trace), seconds)
  return out


def losses(As, log_m, q, y, ridge, batch=64):
  """The objective of ``benchmarks.reference`` in float64 at every iterate of ``As`` (S, K, K)."""
  out = []
  for start in range(0, len(As), batch):
    A = np.asarray(As[start:start + batch], np.float64)
    logits = A[:, q] + log_m  # (s, n, K)
    top = logits.max(-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    fit_term = (lse - A[:, q, y]).mean(-1)
    out.append(fit_term + 0.5 * ridge * (A * A).sum((1, 2)))
  return np.concatenate(out)


def main(_):
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  K, L, n, trials = _K.value, _L.value, _N.value, _TRIALS.value
  common.check_int('K', K, 2, 1000)
  common.check_int('L', L, 1)
  common.check_int('n', n, 1)
  common.check_int('trials', trials, 1)
  common.check_int('steps', _STEPS.value, 1)
  common.check_int('newton_steps', _NEWTON_STEPS.value, 1)
  common.check_float('adam_lr', _LRS.value, 0, lo_open=True)
  common.check_float('gaps', _GAPS.value, 0, lo_open=True)
  lrs, gaps = [float(v) for v in _LRS.value], [float(v) for v in _GAPS.value]
  common.check_float('ridge', _RIDGE.value, 0)
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.setup_jax(use_cache=False)
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling  # pylint: disable=import-outside-toplevel
  rows, start = [], time.time()
  for i in range(trials):
    w_key, data_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(flags.FLAGS.seed), i))
    d = sampling.sample_dataset(data_key, sampling.sample_scores(w_key, K), n, L,
                                sampling.uniform_prompt(K, L))
    counts, query, y = (np.asarray(x[:n]) for x in (d.counts, d.query, d.y))
    with np.errstate(divide='ignore'):
      log_m = np.log(counts.astype(np.float64))
    traces = _traces(K, d, n, _RIDGE.value, _STEPS.value, _NEWTON_STEPS.value, lrs)
    A_scipy, _ = reference.fit_scipy(counts, query, y, n, K, _RIDGE.value, gtol=1e-10)
    # The objective after iterations 1..50, then every 10th (the iteration counts past 50 are
    # rounded up to a multiple of 10): evaluating every Adam step in float64 would dominate.
    grids = {name: np.unique(np.r_[np.arange(min(50, len(t))), np.arange(59, len(t), 10),
                                   len(t) - 1]) for name, (t, _) in traces.items()}
    curves = {name: losses(trace[grids[name]], log_m, query, y, _RIDGE.value)
              for name, (trace, _) in traces.items()}
    best = min(float(losses(A_scipy[None], log_m, query, y, _RIDGE.value)[0]),
               *(c.min() for c in curves.values()))
    for name, (trace, seconds) in traces.items():
      gap = curves[name] - best
      for target in gaps:
        hit = np.nonzero(gap <= target)[0]
        it = int(grids[name][hit[0]]) + 1 if len(hit) else np.nan
        rows.append(dict(solver=name, trial=i, gap=target, iterations=it,
                         seconds=it * seconds / len(trace), final_gap=float(gap[-1]),
                         budget=len(trace)))
    common.progress(f'{NAME}: trial {i + 1}/{trials}', start)
  df = pd.DataFrame(rows)
  io.write_csv(df, os.path.join(flags.FLAGS.results_dir, f'{NAME}.csv'))
  io.write_meta(os.path.join(flags.FLAGS.results_dir, f'{NAME}.meta.json'),
                common.flag_values(['K', 'L', 'n', 'trials', 'steps', 'newton_steps',
                                    'adam_lr', 'gaps', 'ridge']), keys=KEYS)
  summary = df.groupby(['solver', 'gap'], sort=False).agg(
      iterations=('iterations', 'median'), seconds=('seconds', 'median'),
      reached=('iterations', lambda s: f'{s.notna().sum()}/{len(s)}'),
      final_gap=('final_gap', 'median')).reset_index()
  print(f'K={K}, L={L}, n={n}: iterations (median over {trials} trials) to reach an objective '
        f'gap (nats per sample); NaN = not within the budget')
  print(summary.to_string(index=False, float_format=lambda v: f'{v:.3g}'))


if __name__ == '__main__':
  common.run(main)
