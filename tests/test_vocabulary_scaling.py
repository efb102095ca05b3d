"""Vocabulary scaling: the trial function (vmap == a loop over trials), the quick run's CSV,
bad flags, and the exponent / ratio / claim summaries on synthetic frames."""
import jax
import numpy as np
import pandas as pd
import pytest

import ccmc_jax
from ccmc_jax import sampling
from ccmc_jax import theory
from ccmc_jax.trials import vocabulary_scaling as vs
from conftest import run_module


def test_run_cell_equals_a_loop_over_trials_and_fit_mle():
  setting = vs.Setting(K=6, L=4, n=500)
  keys = vs.keys(0, setting, 3)
  batched = vs.run_cell(setting, keys)
  one = jax.jit(vs.make_run_trial(setting))
  for i, key in enumerate(keys):
    single = one(key)
    np.testing.assert_allclose(batched['error'][i], single['error'], rtol=2e-5)
    assert batched['iterations'][i] == single['iterations']
    assert batched['predicted_error'][i] == theory.predicted_error_uniform(single['A'], 4, 500)
  assert np.all(batched['error'] > 0) and np.all(batched['predicted_error'] > 0)
  assert len(set(np.round(batched['error'], 8))) == 3  # the keys reach the data
  # The traced fit is the public entry point's: same data, same estimate.
  _, data_key = jax.random.split(keys[0])
  A = single_A = np.asarray(one(keys[0])['A'])
  prompts, answers = sampling.sample_sparse_dataset(data_key, A, 500, 4)
  for K, L in ((6, 4), (40, 4)):  # the Newton and the CG solver
    if K != 6:
      A = sampling.sample_scores(jax.random.PRNGKey(3), K)
      prompts, answers = sampling.sample_sparse_dataset(jax.random.PRNGKey(4), A, 3000, L)
    ours = vs.fit_scores(prompts, answers, K, 1e-6)[0]  # eager: fit_mle's compiled solvers
    public = ccmc_jax.fit_mle(prompts, answers, K, ridge=1e-6).A_hat
    np.testing.assert_allclose(ours, public, atol=1e-5)
  assert np.isfinite(single_A).all()


def test_quick_run_writes_one_row_per_cell_and_trial(tmp_path):
  r = run_module('experiments.vocabulary_scaling', '--quick', tmp=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  df = pd.read_csv(tmp_path / 'results' / 'vocabulary_scaling.csv')
  assert list(df.columns[:6]) == ['K', 'L', 'n', 'n_over_K2', 'trial', 'seed']
  assert {'error', 'predicted_error', 'iterations'} <= set(df.columns)
  Ks = [8, 16]  # experiments.vocabulary_scaling.QUICK
  expected = sum(vs.trials_at(K, 4, 2) for K in Ks)
  assert len(df) == expected and sorted(df['K'].unique()) == Ks
  assert (df['n'] == 10 * df['K'] ** 2).all() and (df['L'] == 10).all()
  assert df[['error', 'predicted_error']].gt(0).all().all()
  assert (tmp_path / 'figures' / 'vocabulary_scaling.png').exists()


def test_bad_flag_is_one_line_exit_2_no_file(tmp_path):
  r = run_module('experiments.vocabulary_scaling', '--n_over_K2=0', tmp=tmp_path)
  assert r.returncode == 2 and r.stderr.strip().startswith('error: --n_over_K2=0')
  assert len(r.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'results' / 'vocabulary_scaling.csv').exists()


def test_trials_rule_and_sample_size():
  assert [vs.trials_at(K, 32, 2) for K in (4, 8, 16, 32, 64, 512)] == [128, 32, 8, 2, 2, 2]
  assert vs.trials_at(512, 32, 3) == 3 and vs.trials_at(24, 32, 1) == 4
  assert vs.sample_size(512, 10) == 2621440 and vs.sample_size(8, 2.5) == 160


def synthetic(b=2.0, ratio=1.0, Ks=(8, 16, 32, 64, 128, 256, 512), cs=(3.0, 10.0), seed=0):
  """A results frame with error = ratio * predicted, predicted = K^b / n (plus trial noise
  that averages out exactly over the two trials of a cell)."""
  rng = np.random.default_rng(seed)
  rows = []
  for c in cs:
    for K in Ks:
      n = vs.sample_size(K, c)
      noise = rng.uniform(-0.2, 0.2)
      for t, sign in enumerate((1, -1)):
        predicted = K ** b / n
        rows.append({'K': K, 'L': 10, 'n': n, 'n_over_K2': c, 'trial': t,
                     'error': ratio * predicted * (1 + sign * noise),
                     'predicted_error': predicted})
  return pd.DataFrame(rows)


def test_summaries_on_a_frame_that_meets_every_claim():
  df = synthetic()
  for c, b in vs.exponents(df).items():
    assert b == pytest.approx(2.0, abs=1e-9), c
  assert set(vs.exponents(df)) == {3.0, 10.0}
  assert vs.ratios(df) == pytest.approx({K: 1.0 for K in df['K'].unique()})
  assert vs.failures(df) == []
  s = vs.summary(df)
  assert s['failures'] == [] and set(s['exponents']) == {'n/K2=3', 'n/K2=10'}


def test_summaries_flag_a_wrong_rate_a_wrong_constant_and_a_short_range():
  slow = vs.failures(synthetic(b=1.5))
  assert len(slow) == 2 and all('exponent b = 1.500' in m for m in slow)
  assert vs.exponents(synthetic(b=2.3))[3.0] == pytest.approx(2.3)
  off = vs.failures(synthetic(ratio=1.3))
  assert len(off) == 7 and all('error / predicted = 1.300' in m for m in off)
  assert vs.failures(synthetic(ratio=0.79))  # below the lower end too
  short = vs.failures(synthetic(Ks=(8, 16, 32, 64, 128, 256)))
  assert short == ['K spans 8..256: need max K >= 512 and a span >= 64x']
  assert vs.failures(synthetic(Ks=(16, 64, 512)))  # span 32x < 64x


def test_ratio_uses_each_k_largest_n_only():
  df = synthetic()
  # Spoil the smaller n/K^2: the ratios (largest n only) do not move, its exponent does.
  small = df['n_over_K2'] == 3.0
  df.loc[small, 'error'] *= df.loc[small, 'K'] ** 0.5
  assert vs.ratios(df) == pytest.approx({K: 1.0 for K in df['K'].unique()})
  assert vs.exponents(df)[3.0] == pytest.approx(2.5)
