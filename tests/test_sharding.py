"""ccmc_jax.sharding: trial axis over several devices (CPU with forced host devices, in
subprocesses since the device count is fixed when JAX starts)."""
import concurrent.futures
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import fit
from ccmc_jax import sampling
from ccmc_jax import sharding
from ccmc_jax import theory
from conftest import ROOT, run_module

FORCE_4 = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}

# A trial with the kernels the sweeps use (matmul, solve, reductions, a while loop), run on
# 1..9 trials: sharded over 4 devices vs the plain jit(vmap(...)) vs one trial at a time.
SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from ccmc_jax import sharding
    assert jax.device_count() == 4, jax.devices()

    def trial(key):
      x = jax.random.normal(key, (12, 12))
      w = jnp.linalg.solve(x @ x.T + jnp.eye(12), x.sum(1))
      steps = jax.lax.while_loop(lambda s: s[1] < 1e-3 + jnp.abs(x[0, 0]),
                                 lambda s: (s[0] + 1, s[1] * 1.5 + 1e-4), (0, 0.0))[0]
      return {'w': w, 'norm': jnp.tanh(x @ x).sum(), 'steps': steps}

    plain = jax.jit(jax.vmap(trial))
    one = jax.jit(trial)
    for trials in (1, 4, 5):  # padded to 8 = 4 devices x MIN_PER_DEVICE each time
      keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(trials))
      out = sharding.vmap_trials(trial)(keys)
      ref = plain(keys) if trials > 1 else jax.tree.map(lambda x: x[None], one(keys[0]))
      for name in ref:
        assert out[name].shape == ref[name].shape, (trials, name)
        assert np.array_equal(np.asarray(out[name]), np.asarray(ref[name])), (trials, name)
      # The inputs really were split: 4 shards of padded_size / 4 trials.
      placed, n = sharding.shard_trials((keys,), sharding.trial_mesh())
      assert n == trials and len(placed[0].addressable_shards) == 4
      assert placed[0].shape[0] == sharding.padded_size(trials, 4)
    print('ok')
''')


def test_sharded_equals_unsharded_bit_for_bit_on_4_devices():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **FORCE_4)
  r = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-3000:]


def test_sample_complexity_csv_identical_on_1_and_4_devices_and_as_2_processes(tmp_path):
  # The default sweep's code path at CI size: batched Newton fits (vmap over trials and rows,
  # chunked passes, batched solves), padding (6 trials in chunks of TRIAL_CHUNK = 4: [0:4] and
  # [4:6] + 2 padding on 1 device; padded to 32 trials on 4) and the Fisher overlay over a
  # long Monte-Carlo sum. Chosen so that the previous jit(vmap) sharding fails here: 6 of 6
  # rows differed (error, error_W: XLA's CPU backend took other reduction kernels for 6 than
  # for 2 trials per program; predicted_error: the one-sum Fisher information depended on the
  # thread pool, 2 vs 8 threads). Two processes (--process_count=2) run trials [0:3] and
  # [3:6], i.e. other chunks than one process: their concatenated CSVs equal the one-process
  # CSV too (a trial's numbers do not depend on the trials run with it).
  args = ['--K=32', '--n=1000', '--trials=6', '--mc_samples=20000']
  force = lambda d: {'XLA_FLAGS': f'--xla_force_host_platform_device_count={d}'}
  runs = {'1': ([], force(1)), '4': ([], force(4)),
          'p0': (['--process_count=2', '--process_index=0'], None),
          'p1': (['--process_count=2', '--process_index=1'], None)}
  def run(name):
    extra, env = runs[name]
    return run_module('experiments.sample_complexity', *args, *extra, tmp=tmp_path / name,
                      env=env)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two runs side by side
    for r in pool.map(run, runs):
      assert r.returncode == 0, r.stderr[-3000:]
  csv = lambda name: tmp_path / name / 'results' / 'sample_complexity.csv'
  one, four = (open(csv(d), 'rb').read() for d in ('1', '4'))
  assert one == four and len(one.splitlines()) == 1 + 6
  parts = [pd.read_csv(csv('p0')), pd.read_csv(csv('p1'))]
  assert list(parts[0].trial) == [0, 1, 2] and list(parts[1].trial) == [3, 4, 5]
  pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), pd.read_csv(csv('1')),
                                check_exact=True)


@pytest.mark.parametrize('trials,devices,chunk,expected', [
    (1, 1, 4, 8), (8, 1, 4, 8), (9, 1, 4, 12), (20, 1, 4, 20), (20, 4, 4, 32), (8, 4, 4, 32),
    (33, 4, 4, 48), (20, 4, 5, 40)])
def test_chunked_size(trials, devices, chunk, expected):
  assert sharding.chunked_size(trials, devices, chunk) == expected


def _chunk_fn(x, scale):  # a per-chunk program: depends on the chunk's trials together
  return {'y': x * scale + x.sum(), 'rows': jnp.full(x.shape[:1], x.shape[0])}


def test_map_chunks_runs_fixed_chunks_and_drops_the_padding():
  x = jnp.arange(10.0)
  out = sharding.map_chunks(_chunk_fn, (x,), 2.0, chunk=4)  # chunks [0:4], [4:8], [8:10]+pad
  chunks = [np.arange(4.0), np.arange(4.0, 8.0), np.array([8.0, 9.0, 9.0, 9.0])]
  expected = np.concatenate([c * 2.0 + c.sum() for c in chunks])[:10]
  np.testing.assert_array_equal(out['y'], expected)
  np.testing.assert_array_equal(out['rows'], np.full(10, 4))  # fn always sees 4 trials
  with pytest.raises(ValueError):
    sharding.map_chunks(_chunk_fn, (x, x[:3]), 2.0, chunk=4)


@pytest.mark.parametrize('trials,devices,expected', [
    (1, 1, 2), (2, 1, 2), (5, 1, 5), (1, 4, 8), (4, 4, 8), (8, 4, 8), (9, 4, 12), (20, 4, 20)])
def test_padded_size(trials, devices, expected):
  assert sharding.padded_size(trials, devices) == expected


def test_pad_and_unpad_repeat_the_last_trial():
  x = {'a': np.arange(6.0).reshape(3, 2), 'b': np.array([1, 2, 3])}
  padded = sharding.pad_trials(x, 5)
  np.testing.assert_array_equal(padded['a'], [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
  np.testing.assert_array_equal(padded['b'], [1, 2, 3, 3, 3])
  back = sharding.unpad(padded, 3)
  np.testing.assert_array_equal(back['a'], x['a'])
  with pytest.raises(ValueError):
    sharding.pad_trials(x, 2)


def test_one_device_calls_the_function_unchanged():
  calls = []
  mesh = sharding.trial_mesh(sharding.jax.local_devices()[:1])
  out = sharding.run_sharded(lambda a, s: calls.append(a.shape) or a * s, (np.ones(3),), 2.0,
                             mesh=mesh)
  assert calls == [(3,)] and np.array_equal(np.asarray(out), [2.0, 2.0, 2.0])


@pytest.mark.parametrize('trials,count', [(20, 3), (2, 4), (7, 7), (0, 2), (100, 8)])
def test_process_slice_covers_every_trial_once_in_order(trials, count):
  slices = [sharding.process_slice(trials, i, count) for i in range(count)]
  assert [t for s in slices for t in s] == list(range(trials))
  assert max(map(len, slices)) - min(map(len, slices)) <= 1
  with pytest.raises(ValueError):
    sharding.process_slice(trials, count, count)


def test_process_slice_defaults_to_this_single_process():
  assert sharding.process_slice(5) == range(5)


def test_ensure_cpu_threads_only_with_forced_devices_and_keeps_a_user_setting():
  env = {'XLA_FLAGS': '--xla_backend_optimization_level=1'}
  assert sharding.ensure_cpu_threads(env) is None and 'PJRT_NPROC' not in env
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  assert sharding.ensure_cpu_threads(env) >= 8 and int(env['PJRT_NPROC']) >= 8
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'NPROC': '3'}
  assert sharding.ensure_cpu_threads(env) is None and 'PJRT_NPROC' not in env


def test_chunked_fisher_information_matches_a_float64_reference():
  # predicted_error(chunked=True) (what the sweep uses: thread-count independent) against the
  # same Monte-Carlo estimate in float64 numpy: F_k = (1/N) sum_{t: q_t = k} diag pi_t - pi_t pi_t^T.
  K, L, N = 5, 10, 50000
  A = sampling.sample_scores(jax.random.PRNGKey(3), K)
  mc = sampling.sample_dataset(jax.random.PRNGKey(4), A, N, L, sampling.uniform_prompt(K, L))
  capacity = fit.round_capacity(fit.row_capacity(mc.query, K), 1024)
  assert capacity > fit.CHUNK and capacity % fit.CHUNK == 0  # the chunked path
  got = float(jax.jit(lambda a, d: theory.predicted_error(a, d, K, capacity, 1.0, chunked=True))(
      A, mc))
  A64, q, counts = (np.asarray(v, np.float64) for v in (A, mc.query, mc.counts))
  P = np.exp(A64 - A64.max(1, keepdims=True))
  P /= P.sum(1, keepdims=True)
  total = 0.0
  for k in range(K):
    m = counts[q == k]
    logits = A64[k] + np.log(np.where(m > 0, m, 1.0)) - np.where(m > 0, 0.0, np.inf)
    pi = np.exp(logits - logits.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    F = (np.diag(pi.sum(0)) - pi.T @ pi) / N
    J = np.diag(P[k]) - np.outer(P[k], P[k])
    total += np.trace(J @ np.linalg.pinv(F, rcond=1e-6, hermitian=True) @ J)
  assert got == pytest.approx(total, rel=1e-5)
