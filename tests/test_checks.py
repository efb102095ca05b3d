"""Issue 14, items 3 and 4: checks that NaN cannot fool, and no silent substitutions.

* The positional routes are computed in log space: finite at the flags' maxima (--scale=50,
  --pos_scale=10) and equal to a float64 NumPy attention loop (paper Lemma 2.5).
* A check an experiment exists to make fails on NaN (and on the -inf that XLA's fused max can
  make of an all-NaN slice), and a failed check exits 1 with a FAILED line.
* A zero-diagonal chain never emits a token it cannot emit: a context of the query token alone
  (--window=1, --X0=1,1,1), a --P_file row with no off-diagonal mass, or a P whose zeros leave a
  context with no next token are one-line errors naming the flag; --W beyond [-40, 40] too.
"""
import os

import jax
import numpy as np
import pandas as pd

from conftest import run_module
from ccmc_jax import positional
from ccmc_jax.trials import attention_equivalence as ae
from ccmc_jax.trials import ccmc_example
from ccmc_jax.trials import collapse
from ccmc_jax.trials import common
from ccmc_jax.trials import positional_encoding as pe


def attention_loop64(W, E, pos, X, cross):
  """Literal attention with positional embeddings in float64, one prompt at a time."""
  out = []
  for x in X:
    emb = E[x] + pos
    keys, toks = (emb[:-1], x[:-1]) if cross else (emb, x)
    z = keys @ W @ emb[-1]
    s = np.exp(z - z.max())
    out.append(np.bincount(toks, weights=s / s.sum(), minlength=E.shape[0]))
  return np.array(out)


def test_positional_log_routes_match_float64_attention_at_the_flag_maxima():
  """--scale=50, --pos_scale=10: P_eff underflows and exp(log_w) overflows in float32 (the
  probability form gave NaN); the log form stays finite and equals float64 attention."""
  rng = np.random.default_rng(0)
  K, L, d_pos = 4, 6, 3
  Q, _ = np.linalg.qr(rng.normal(size=(K + d_pos, K + d_pos)))
  E, pos = Q[:, :K].T, 10.0 * rng.normal(size=(L, d_pos)) @ Q[:, K:].T
  W = 50.0 * rng.normal(size=(K + d_pos, K + d_pos))
  X = rng.integers(0, K, size=(50, L))
  A_eff, log_w = positional.attention_to_positional_scores(
      *(np.float32(a) for a in (W, E, pos)))
  assert np.all(np.isfinite(A_eff)) and np.all(np.isfinite(log_w))
  assert np.abs(np.asarray(log_w)).max() > 100  # exp(log_w) overflows float32 here
  for cross in (False, True):
    ref = attention_loop64(W, E, pos, X, cross)
    got = np.exp(np.asarray(positional.positional_log_probs(A_eff, log_w[X[:, -1]], X, cross),
                            np.float64))
    assert np.all(np.isfinite(got))
    # float32 scores of magnitude ~1e5 carry round-off ~1e-2 in the logits: a loose bound,
    # still far below the O(1) differences of a wrong formula.
    np.testing.assert_allclose(got, ref, atol=2e-2)
  # At moderate scale the same functions agree with float64 to float32 round-off.
  A_eff, log_w = positional.attention_to_positional_scores(
      *(np.float32(a) for a in (W / 50, E, pos / 10)))
  ref = attention_loop64(W / 50, E, pos / 10, X, False)
  np.testing.assert_allclose(
      np.exp(positional.positional_log_probs(A_eff, log_w[X[:, -1]], X)), ref, atol=2e-6)


def test_equivalence_trial_has_no_nan_at_the_flag_maxima():
  """Every route of the experiment's trial is finite at --scale=50 --pos_scale=10 (it gave
  NaN, and -inf from XLA's max, on the old code); the log routes stay near attention."""
  sweep = pe.EqSweep(3, 6, 4, 10, 50.0, 10.0)
  out = pe.run_eq_cell(3, 6, (False, True), sweep, pe.eq_keys(0, 3, 6, 8))
  m = np.asarray(out['max_abs_diff'])  # (trials, crosses, routes)
  assert np.all(np.isfinite(m)) and np.all(m >= 0)
  assert m[..., pe.ROUTES.index('embedding_log')].max() < 1e-2
  assert m[..., pe.ROUTES.index('bias')].max() < 1e-5


def test_nan_and_minus_inf_fail_every_check():
  assert np.isnan(common.nan_max(pd.Series([1e-9, np.nan])))  # pandas' max would say 1e-9
  assert not common.within(float('nan'), 1e-5) and not common.within(float('-inf'), 1e-5)
  assert common.within(0.0, 1e-5) and not common.within(2e-5, 1e-5)
  x = jax.numpy.array([[np.nan, np.nan], [0.5, 0.25]])
  assert np.isnan(common.finite_max(x, axis=1)[0]) and common.finite_max(x, axis=1)[1] == 0.5
  eq = pd.DataFrame({'K': 3, 'L': 3, 'cross': 0, 'route': ['embedding', 'embedding', 'bias'],
                     'trial': [0, 1, 0], 'prompts': 5, 'max_abs_diff': [1e-7, np.nan, 1e-7]})
  assert 'embedding (nan)' in pe.eq_failure(eq, 1e-5)
  assert pe.eq_summary_dict(eq, 1e-5)['passed'] is False
  assert pe.eq_failure(eq.fillna(1e-6), 1e-5) is None
  att = pd.DataFrame({'K': [3, 10], 'L': 10, 'cross': [0, 1], 'trial': 0, 'prompts': 5,
                      'max_abs_diff': [1e-7, np.nan]})
  example = pd.DataFrame(ccmc_example.to_columns(ccmc_example.example_quantities(
      np.array([[0.4, 1.0], [1.3, -0.5]]), np.array([0, 1, 0])), ccmc_example.QUANTITIES))
  assert 'K=10 L=10 cross' in ae.failure(att, example, 1e-5)
  assert ae.failure(att.fillna(0.5), example, 1e-5).startswith(
      'max |attention - CCMC| = 0.5 > tol')
  assert ae.failure(att.fillna(1e-6), example, 1e-5) is None
  example.loc[example['quantity'] == 'pi', 'value'] = np.nan
  assert ae.failure(att.fillna(1e-6), example, 1e-5).startswith('worked example')


def test_positional_scale_50_exits_1_with_finite_csv(tmp_path):
  """The probability-form route cannot hold at --scale=50 in float32 (P_eff underflows on
  the key tokens): FAILED and exit 1 after the CSVs and figure are written (it exited 0)."""
  r = run_module('experiments.positional_encoding', '--scale=50', '--K=2', '--L=3', '--n=50',
                 '--trials=1', '--eq_K=3', '--eq_L=3', '--eq_trials=8', '--eq_prompts=8',
                 tmp=tmp_path)
  assert r.returncode == 1, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith('FAILED: positional_encoding: ')
  assert 'route embedding (1)' in r.stderr
  eq = pd.read_csv(tmp_path / 'results' / 'positional_encoding_equivalence.csv')
  assert eq['max_abs_diff'].notna().all() and (eq['max_abs_diff'] >= 0).all()
  log_routes = eq[eq['route'] != 'embedding']['max_abs_diff']
  assert log_routes.max() < 1e-5
  assert os.path.isfile(tmp_path / 'figures' / 'positional_encoding.png')


def test_attention_equivalence_failure_exits_1(tmp_path):
  """At --scale=50 the float32 P = softmax(W^T) underflows on every key token of some draws:
  the check fails loudly (it printed "> tol" and exited 0)."""
  r = run_module('experiments.attention_equivalence', '--scale=50', '--K=3', '--L=10',
                 '--attention=cross', '--trials=20', '--prompts=20', '--scatter_trials=1',
                 tmp=tmp_path)
  assert r.returncode == 1, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith(
      'FAILED: attention_equivalence: max |attention - CCMC| = ')
  assert os.path.isfile(tmp_path / 'results' / 'attention_equivalence.csv')


def test_zero_diagonal_chain_never_emits_an_impossible_token():
  """The old sampler fell back to pi ∝ m on a 0/0 context: X0 = 1,1,1 with no self-loops
  emitted token 1 forever (top-1 share 1.0)."""
  assert collapse.zero_diag_context_error([1, 1, 1], 0).startswith('--X0=1,1,1 is invalid')
  assert collapse.zero_diag_context_error([], 1).startswith('--window=1 is invalid')
  assert '--window' in collapse.zero_diag_context_error([0, 1, 1], 2)
  assert collapse.zero_diag_context_error([0, 1, 1], 3) is None
  assert collapse.zero_diag_context_error([], 0) is None
  assert collapse.row_without_off_diagonal_mass(np.eye(3)) == 0
  assert collapse.row_without_off_diagonal_mass(np.full((3, 3), 1 / 3)) is None
  # The runtime guard behind the flag checks: the sweep and the example refuse a 0/0 context.
  cycle = np.where(np.roll(np.eye(3), 1, axis=1) > 0, 0.0, -np.inf).astype(np.float32)  # log P
  for call in (lambda: collapse.seed_sweep(0, 2, 3, 20, zero_diag=True, X0=[1, 1, 1]),
               lambda: collapse.example(0, 0, 3, 20, X0=[0], A=cycle)):
    try:
      call()
    except collapse.ZeroMassError as e:
      assert 'pi^X = 0/0' in str(e)
    else:
      raise AssertionError('a 0/0 context was sampled from')


def test_collapse_and_example_bad_inputs_are_one_line_errors(tmp_path):
  np.save(tmp_path / 'I.npy', np.eye(3))
  cases = [('experiments.collapse', ['--K=3', f'--P_file={tmp_path}/I.npy'],
            '--P_file=', 'no off-diagonal mass'),
           ('experiments.ccmc_example', ['--W=1e39,1,1,1', '--X=0,1'],
            '--W=1e+39 is invalid', '[-40.0, 40.0]')]
  for module, args, start, why in cases:
    r = run_module(module, *args, tmp=tmp_path / module)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith('error: ' + start) and why in lines[0], lines[0]
    assert not os.path.exists(tmp_path / module / 'results' / 'collapse.csv')
    assert not os.path.exists(tmp_path / module / 'results' / 'ccmc_example.csv')
