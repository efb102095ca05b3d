"""The benchmarks run and check what they claim, on tiny settings (their timings are not tested)."""
import pandas as pd

from conftest import run_module


def test_benchmark_implementations_reach_the_same_estimates(tmp_path):
  r = run_module('benchmarks.run', '--K=3', '--n=500,2000', '--trials=2', '--ref_trials=1',
                 '--nowhole_command', tmp=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  df = pd.read_csv(tmp_path / 'results' / 'benchmark.csv')
  assert len(df) == 3 and df['seconds'].gt(0).all()
  # Ours against SciPy L-BFGS-B and the plain JAX loop on the same data.
  assert df['max_abs_P_diff'].max() < 2e-3, df
  assert 'same estimates' in r.stdout


def test_solver_comparison_newton_reaches_the_optimum_first(tmp_path):
  r = run_module('benchmarks.solvers', '--K=3', '--n=500', '--trials=1', '--steps=100',
                 '--adam_lr=0.3', tmp=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  df = pd.read_csv(tmp_path / 'results' / 'solvers.csv').set_index(['solver', 'gap'])
  newton, lbfgs = df.loc[('newton', 1e-6)], df.loc[('lbfgs', 1e-6)]
  assert newton['iterations'] <= 4 and newton['final_gap'] < 1e-8
  assert lbfgs['iterations'] > newton['iterations']
  # The gap is measured against the best objective any solver reached: never below zero.
  assert df['final_gap'].min() > -1e-9
