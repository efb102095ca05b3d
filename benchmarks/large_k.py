"""Benchmark: ``ccmc_jax.fit_mle`` at vocabulary scale vs SciPy L-BFGS-B, and a K table.

(a) On one data set (default K = 1000, L = 10, n = 1e6, uniform prompts, ``A* ~ N(0, 1)``) it
    fits the same token ids with ``ccmc_jax.fit_mle`` and with a competent NumPy/SciPy baseline
    (float64, vectorised loss and gradient on the ids with ``np.bincount``, L-BFGS-B on the total
    NLL with ``gtol=1e-4`` nats, ``ftol=1e-10``), each in a fresh Python process (import, data
    loading and compilation included): wall time, peak RSS (``getrusage`` in the child), the
    float64 objective of both estimates (the gap, in nats), iterations, ``||P_hat - P*||_F^2``.
(b) A table of fit time and peak memory of ``fit_mle`` (method 'auto') for ``--K_table``, each in
    a fresh process.
(c) The crossover of method 'auto': warm in-process fit times of 'newton' and 'cg' for
    ``--K_cross`` at ``--n_cross`` samples.

  python -m benchmarks.large_k           # ~5 min on 2 CPU cores
  python -m benchmarks.large_k --quick   # seconds

Writes results/benchmark_large_k.csv (long format: one row per part, K, method and metric) and
its .meta.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)

_K = flags.DEFINE_integer('K', 1000, 'Vocabulary size K of the SciPy comparison (a); >= 2.')
_L = flags.DEFINE_integer('L', 10, 'Prompt length L (paper Sec. 3); >= 2.')
_N = flags.DEFINE_integer('n', 1000000, 'Samples n of (a) and (b); >= 1.')
_K_TABLE = flags.DEFINE_list('K_table', ['100', '300', '1000', '2000', '4000'],
                             'Vocabulary sizes of the time/memory table (b); each >= 2.')
_K_CROSS = flags.DEFINE_list('K_cross', ['8', '16', '32', '64', '128'],
                             "Vocabulary sizes of the 'newton' vs 'cg' crossover (c).")
_N_CROSS = flags.DEFINE_integer('n_cross', 100000, 'Samples n of the crossover (c); >= 1.')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge of the objective (both fits); >= 0.')
_SCIPY = flags.DEFINE_bool('scipy', True, 'Run the SciPy baseline of (a).')

NAME = 'benchmark_large_k'
KEYS = ['part', 'K', 'method', 'metric']

OURS = """
import sys, time, resource
import numpy as np
start = time.perf_counter()
import ccmc_jax
d = np.load(sys.argv[1])
res = ccmc_jax.fit_mle(d['prompts'], d['answers'], int(sys.argv[3]), ridge=float(sys.argv[4]),
                       method=sys.argv[5])
A_hat = np.asarray(res.A_hat)
seconds = time.perf_counter() - start
np.save(sys.argv[2] + '.npy', A_hat)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
method = ccmc_jax.sparse_fit.choose_method(A_hat.shape[0], len(d['answers']))
print(seconds, rss, int(res.iters), method if sys.argv[5] == 'auto' else sys.argv[5])
"""

SCIPY = """
import sys, time, resource
import numpy as np
start = time.perf_counter()
import scipy.optimize
d = np.load(sys.argv[1])
X, y, K, ridge = d['prompts'], d['answers'], int(sys.argv[3]), float(sys.argv[4])
n = len(y)
idx = (X[:, -1:].astype(np.int64) * K + X).ravel()  # flat (row, token) index of every key
ans = X[:, -1].astype(np.int64) * K + y
b = np.bincount(ans, minlength=K * K).astype(np.float64)

def fg(a):  # total NLL (nats) and gradient, float64, vectorised over samples and positions
  z = a[idx].reshape(X.shape)
  top = z.max(axis=1)
  e = np.exp(z - top[:, None])
  tot = e.sum(axis=1)
  f = np.sum(top + np.log(tot)) - a[ans].sum() + 0.5 * ridge * n * a @ a
  g = np.bincount(idx, weights=(e / tot[:, None]).ravel(), minlength=K * K) - b
  return f, g + ridge * n * a

res = scipy.optimize.minimize(fg, np.zeros(K * K), jac=True, method='L-BFGS-B',
                              options={'gtol': 1e-4, 'ftol': 1e-10, 'maxiter': 1000})
A_hat = res.x.reshape(K, K)
A_hat -= A_hat.mean(axis=1, keepdims=True)
seconds = time.perf_counter() - start
np.save(sys.argv[2] + '.npy', A_hat)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(seconds, rss, res.nit, 'scipy L-BFGS-B')
"""


def _data(path, K, L, n, seed):
  """Uniform-prompt data with ``A* ~ N(0, 1)`` saved to ``path`` (npz); returns A*."""
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling  # pylint: disable=import-outside-toplevel
  key = jax.random.fold_in(jax.random.PRNGKey(seed), K)
  A = sampling.sample_scores(jax.random.fold_in(key, 0), K)
  X, y = sampling.sample_sparse_dataset(jax.random.fold_in(key, 1), A, n, L)
  np.savez(path, prompts=np.asarray(X), answers=np.asarray(y))
  return np.asarray(A, np.float64)


def _child(code, data, K, ridge, method, tmp):
  """Run a fit in a fresh interpreter; returns (wall s, in-process s, RSS GB, iters, method, A)."""
  out = os.path.join(tmp, 'A_hat')
  start = time.perf_counter()
  r = subprocess.run([sys.executable, '-c', code, data, out, str(K), str(ridge), method],
                     capture_output=True, text=True, check=False,
                     env=dict(os.environ, PYTHONPATH=os.getcwd()))
  wall = time.perf_counter() - start
  if r.returncode:
    raise RuntimeError(f'fit subprocess failed: {r.stderr.strip().splitlines()[-1]}')
  seconds, rss, iters, name = r.stdout.split(maxsplit=3)
  return wall, float(seconds), float(rss), int(iters), name.strip(), np.load(out + '.npy')


def nll64(A, X, y, ridge):
  """float64 objective (mean NLL + ridge) on token ids, in nats per sample."""
  A = np.asarray(A, np.float64)
  q = X[:, -1]
  z = A[q[:, None], X]
  top = z.max(1)
  lse = top + np.log(np.exp(z - top[:, None]).sum(1))
  return float(np.mean(lse - A[q, y]) + 0.5 * ridge * np.sum(A * A))


def p_error(A_hat, A):
  P = lambda B: np.exp(B - B.max(1, keepdims=True)) / np.exp(B - B.max(1, keepdims=True)).sum(
      1, keepdims=True)
  return float(np.sum((P(A_hat) - P(A)) ** 2))


def compare(K, L, n, ridge, seed, scipy, tmp):
  """Part (a): rows of metrics for ours and SciPy on one data set."""
  path = os.path.join(tmp, f'data_{K}.npz')
  A = _data(path, K, L, n, seed)
  d = np.load(path)
  rows, fits = [], {}
  for label, code, method in [('ours', OURS, 'auto')] + ([('scipy', SCIPY, '-')] if scipy else []):
    wall, sec, rss, iters, name, A_hat = _child(code, path, K, ridge, method, tmp)
    fits[label] = A_hat
    metrics = dict(wall_seconds=wall, fit_process_seconds=sec, peak_rss_gb=rss, iterations=iters,
                   objective=nll64(A_hat, d['prompts'], d['answers'], ridge),
                   p_error=p_error(A_hat, A))
    rows += [dict(part='a', K=K, method=f'{label}: {name}', metric=k, value=v)
             for k, v in metrics.items()]
  return rows, fits


def table(Ks, L, n, ridge, seed, tmp):
  """Part (b): fresh-process time and peak memory of fit_mle(method='auto') per K."""
  rows = []
  for K in Ks:
    path = os.path.join(tmp, f'data_{K}.npz')
    A = _data(path, K, L, n, seed)
    wall, sec, rss, iters, name, A_hat = _child(OURS, path, K, ridge, 'auto', tmp)
    metrics = dict(wall_seconds=wall, fit_process_seconds=sec, peak_rss_gb=rss,
                   iterations=iters, p_error=p_error(A_hat, A))
    rows += [dict(part='b', K=K, method=name, metric=k, value=v) for k, v in metrics.items()]
    common.progress(f'{NAME}: table K={K} {name}: {sec:.1f} s, {rss:.2f} GB')
  return rows


def crossover(Ks, L, n, ridge, seed):
  """Part (c): warm (compiled) in-process time of both methods per K."""
  import jax  # pylint: disable=import-outside-toplevel
  import ccmc_jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling  # pylint: disable=import-outside-toplevel
  rows = []
  for K in Ks:
    A = sampling.sample_scores(jax.random.PRNGKey(seed), K)
    X, y = (np.asarray(v) for v in sampling.sample_sparse_dataset(
        jax.random.PRNGKey(seed + 1), A, n, L))
    for method in ('newton', 'cg'):
      jax.block_until_ready(ccmc_jax.fit_mle(X, y, K, ridge=ridge, method=method).A_hat)
      start = time.perf_counter()
      res = jax.block_until_ready(ccmc_jax.fit_mle(X, y, K, ridge=ridge, method=method))
      rows += [dict(part='c', K=K, method=method, metric='warm_seconds',
                    value=time.perf_counter() - start),
               dict(part='c', K=K, method=method, metric='iterations', value=int(res.iters))]
  return rows


def main(_):
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  F = flags.FLAGS
  if F.quick:
    for name, value in {'K': 50, 'n': 20000, 'K_table': ['40', '120'], 'K_cross': ['8'],
                        'n_cross': 5000}.items():
      if not F[name].present:
        F[name].value = value
  common.check_int('K', _K.value, 2, 46340)
  common.check_int('L', _L.value, 2)
  common.check_int('n', _N.value, 1)
  common.check_int('K_table', _K_TABLE.value, 2, 46340)
  common.check_int('K_cross', _K_CROSS.value, 2, 46340)
  common.check_int('n_cross', _N_CROSS.value, 1)
  common.check_float('ridge', _RIDGE.value, 0)
  common.check_writable_dir('results_dir', F.results_dir)
  start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    rows, _ = compare(_K.value, _L.value, _N.value, _RIDGE.value, F.seed, _SCIPY.value, tmp)
    common.progress(f'{NAME}: (a) ours vs SciPy at K={_K.value} done', start)
    rows += table([int(k) for k in _K_TABLE.value], _L.value, _N.value, _RIDGE.value, F.seed,
                  tmp)
  rows += crossover([int(k) for k in _K_CROSS.value], _L.value, _N_CROSS.value, _RIDGE.value,
                    F.seed)
  df = pd.DataFrame(rows)
  df.insert(2, 'L', _L.value)
  df.insert(3, 'n', np.where(df.part == 'c', _N_CROSS.value, _N.value))
  io.write_csv(df, os.path.join(F.results_dir, f'{NAME}.csv'))
  io.write_meta(os.path.join(F.results_dir, f'{NAME}.meta.json'),
                common.flag_values(['K', 'L', 'n', 'K_table', 'K_cross', 'n_cross', 'ridge',
                                    'scipy']), keys=KEYS)
  wide = df.pivot_table(index=['part', 'K', 'method'], columns='metric', values='value')
  with pd.option_context('display.width', 200, 'display.max_columns', 20):
    print(wide.to_string(float_format=lambda v: f'{v:.4g}'))
  a = wide.loc['a']
  if _SCIPY.value:
    ours = a[a.index.get_level_values('method').str.startswith('ours')].iloc[0]
    ref = a[a.index.get_level_values('method').str.startswith('scipy')].iloc[0]
    print(f'\n(a) K={_K.value}, n={_N.value}: fresh process ours {ours.wall_seconds:.1f} s vs '
          f'SciPy {ref.wall_seconds:.1f} s: {ref.wall_seconds / ours.wall_seconds:.1f}x faster; '
          f'peak RSS {ours.peak_rss_gb:.2f} vs {ref.peak_rss_gb:.2f} GB; objective gap ours - '
          f'SciPy {(ours.objective - ref.objective) * _N.value:.3g} nats (total); '
          f'||P_hat - P*||^2 {ours.p_error:.5g} vs {ref.p_error:.5g} '
          f'(ratio {ours.p_error / ref.p_error:.4f})')


if __name__ == '__main__':
  common.run(main)
