"""experiments.trajectory_learning and experiments.collapse_statistics: --quick smoke runs, bad
inputs, and the collapse-time / winner-count helper on hand-made frequency traces.

The experiment modules define absl flags at import, so everything that imports them runs in a
subprocess (importing them here could clash with another test file's flags)."""
import json

import pandas as pd

from conftest import run_module



run = run_module


def test_trajectory_learning_quick(tmp_path):
  r = run('experiments.trajectory_learning', '--quick', tmp=tmp_path)
  assert r.returncode == 0, r.stderr
  df = pd.read_csv(tmp_path / 'results' / 'trajectory_learning.csv')
  for c in ['source', 'K', 'L0', 'T', 'trial', 'seed', 'error', 'visited_rows', 'min_visits']:
    assert c in df.columns
  assert len(df) == 2 * 2 * 4  # sources x T values (100, 1000) x trials
  assert set(df['source']) == {'single', 'iid'} and set(df['T']) == {100, 1000}
  assert df['visited_rows'].between(1, 6).all() and (df['error'] > 0).all()
  rows = pd.read_csv(tmp_path / 'results' / 'trajectory_learning_rows.csv')
  assert len(rows) == len(df) * 6
  # Visits of the rows add up to T (every sample has one query).
  assert (rows.groupby(['source', 'T', 'trial'])['visits'].sum()
          == rows.groupby(['source', 'T', 'trial'])['T'].first()).all()
  with open(tmp_path / 'results' / 'trajectory_learning.meta.json') as f:
    s = json.load(f)['summary']
  assert s['T_max'] == 1000 and s['ratio_single_over_iid'] > 1
  for ext in ('png', 'pdf'):
    assert (tmp_path / 'figures' / f'trajectory_learning.{ext}').stat().st_size > 0


def test_collapse_statistics_quick(tmp_path):
  r = run('experiments.collapse_statistics', '--quick', tmp=tmp_path)
  assert r.returncode == 0, r.stderr
  df = pd.read_csv(tmp_path / 'results' / 'collapse_statistics.csv')
  for c in ['sweep', 'K', 'L0', 'scale', 'variant', 'seed', 'winners', 'top1', 'top2',
            'collapse_time', 'max_final_freq']:
    assert c in df.columns
  # K sweep (8), L0 sweep (8, 32), scale sweep (0.5, 2): 5 cells x 2 variants x 16 seeds.
  assert len(df) == 5 * 2 * 16
  assert df['collapse_time'].between(1, 300).all()
  assert (df['top1'] <= df['top2'] + 1e-6).all() and (df['top2'] <= 1 + 1e-6).all()
  z = df[df['variant'] == 'zero_diag']
  # Exact: no token follows itself, so at most ceil(T/2) of T=300 generated tokens, plus its
  # copies in X0 (1 + max(0, L0 - K)).
  bound = (1 + (z['L0'] - z['K']).clip(lower=0) + 150) / (z['L0'] + 300)
  assert (z['max_final_freq'] <= bound + 1e-6).all()
  with open(tmp_path / 'results' / 'collapse_statistics.meta.json') as f:
    s = json.load(f)['summary']
  assert s['zero_diag_exact_bound_respected'] and s['zero_diag_max_final_freq'] <= bound.max()
  for ext in ('png', 'pdf'):
    assert (tmp_path / 'figures' / f'collapse_statistics.{ext}').stat().st_size > 0


def test_collapse_summary_and_padded_prompt():
  import jax
  import numpy as np
  from ccmc_jax import trajectory
  # Hand-made trace, threshold 0.3: the above-threshold set is {0,1}, {0}, then {0,1} from
  # t = 3 on, so the collapse time is 3; final frequencies (.5, .31, .19): 2 winners.
  f = np.array([[.5, .4, .1], [.6, .2, .2], [.4, .35, .25], [.5, .32, .18],
                [.45, .35, .2], [.5, .31, .19]], np.float32)
  s = trajectory.collapse_summary(f, 0.3)
  assert int(s['winners']) == 2 and int(s['collapse_time']) == 3, s
  np.testing.assert_allclose([s['top1'], s['top2']], [.5, .81], rtol=1e-6)
  assert int(trajectory.collapse_summary(f[2:], 0.3)['collapse_time']) == 1  # never changes
  g = f.copy()
  g[-2] = [.2, .2, .6]  # changes at the second-to-last step: time T
  s = trajectory.collapse_summary(g, 0.3)
  assert int(s['collapse_time']) == 6 and int(s['winners']) == 2, s
  assert int(trajectory.collapse_summary(f, 0.7)['winners']) == 0
  # A prompt padded with -1 entries (traced L0) is the unpadded prompt, right-aligned, and
  # gives exactly the same trajectory. jit: eager random ops are slow to dispatch.
  key = jax.random.PRNGKey(3)
  log_P = jax.nn.log_softmax(jax.random.normal(key, (5, 5)), -1)
  gen = jax.jit(trajectory.generate, static_argnums=3)
  padded = jax.jit(lambda k, L0: trajectory.initial_prompt(k, 5, L0, 12))
  X0 = np.asarray(jax.jit(lambda k: trajectory.initial_prompt(k, 5, 7))(key))
  Xp = np.asarray(padded(key, 7))
  np.testing.assert_array_equal(Xp, np.r_[[-1] * 5, X0])
  assert sorted(X0[:5].tolist()) == list(range(5))  # a permutation, then uniform tokens
  np.testing.assert_array_equal(np.asarray(padded(key, 3))[-3:], X0[:3])  # L0 < K: prefix
  a, b = gen(key, log_P, X0, 50), gen(key, log_P, Xp, 50)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.freqs, b.freqs, rtol=1e-6)
