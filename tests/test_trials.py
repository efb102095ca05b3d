"""Per-figure trials and figures in process: the batched runs the experiments use equal a plain
per-trial loop, the summaries on synthetic frames, and the figures drawn from CSVs (axes,
legends, pixel size). Figures 2 and 3 (attention_equivalence, self_vs_cross) are in
test_figures_2_3.py."""
import json

import jax
import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import io
from ccmc_jax import model
from ccmc_jax import sharding
from ccmc_jax.trials import ccmc_example as example
from ccmc_jax.trials import positional_encoding as pe
from ccmc_jax.trials import sample_complexity as sc
from experiments import common
from experiments.plots import ccmc_example as example_plots
from experiments.plots import positional_encoding as pe_plots
from experiments.plots import sample_complexity as sc_plots
from experiments.plots import style

# As the experiments do: compiled programs are reused across runs (never changes a number).
common.enable_compilation_cache()


def stack(rows):
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def png_size(fig, tmp_path, name):
  """(width, height) in pixels of the saved PNG."""
  png, _ = style.save(fig, str(tmp_path), name)
  h, w = matplotlib.image.imread(png).shape[:2]
  return w, h


def legend_texts(fig):
  return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


# --- sample complexity (paper Figs. 4 and 6) ---

SC = sc.Setting(K=3, L=4, ns=(100, 300), mc_samples=1000)


def test_sample_complexity_stages_equal_a_loop_over_trials_and_compile_once_per_K():
  keys = sc.keys(0, SC, 3)
  _, data, mc = sc.generate(SC, keys)
  cols = {n: c for n, c in sc.run_setting(SC, keys)}
  # The reference fits only the largest n (same n_max, so the same data): one Newton loop to
  # compile instead of one per n.
  run_trial = jax.jit(sc.make_run_trial(SC._replace(ns=(300,)), sc.capacity(data.query, SC.K),
                                        sc.capacity(mc.query, SC.K)))
  loop = stack([run_trial(k) for k in keys])  # (trials, 1)
  for name in ('error', 'error_W', 'predicted_error'):
    np.testing.assert_allclose(cols[300][name], loop[name][:, 0], rtol=2e-5, err_msg=name)
  np.testing.assert_array_equal(cols[300]['newton_iters'], loop['newton_iters'][:, 0])
  np.testing.assert_allclose(cols[100]['predicted_error'], 3 * cols[300]['predicted_error'],
                             rtol=1e-6)  # the asymptotic prediction is (1/n) x the n = 1 value
  assert (cols[300]['error'] > 0).all() and cols[300]['error'].mean() < cols[100]['error'].mean()
  # The sweep (with look-ahead) gives the same numbers; one compilation per K of each stage,
  # none per n; the uniforms do not depend on K.
  other = SC._replace(K=4)
  swept = {(s.K, n): c for s, n, c in sc.sweep([SC, other], 0, 3, {SC: SC.ns, other: (300,)})}
  assert sorted(swept) == [(3, 100), (3, 300), (4, 300)]
  np.testing.assert_array_equal(swept[3, 300]['error'], cols[300]['error'])
  assert sc._uniform_stage(SC.L, 300, 1000)._cache_size() == 1  # pylint: disable=protected-access
  fit_program = sharding._chunk_program(  # pylint: disable=protected-access
      sc._fit_chunk(SC.ridge), sc.TRIAL_CHUNK, sharding.trial_mesh(), 2, 1)  # pylint: disable=protected-access
  assert fit_program._cache_size() == 2  # pylint: disable=protected-access


def sc_frame(slopes, Ks=(3, 5), Ls=(10,), trials=4):
  """Synthetic results: error = c K^2 n^slope (1 + 0.1 trial)."""
  rows = []
  for K in Ks:
    for L in Ls:
      for n in (100, 1000, 10000):
        for t in range(trials):
          e = 0.5 * K ** 2 * n ** slopes[L] * (1 + 0.1 * t)
          rows.append(dict(K=K, L=L, n=n, trial=t, error=e, predicted_error=e))
  return pd.DataFrame(rows)


def test_sample_complexity_slopes_and_figure(tmp_path):
  df = sc_frame({10: -1.0, 20: -0.8})
  df = pd.concat([df, sc_frame({20: -0.8}, Ks=(5,), Ls=(20,))])
  df = df.drop_duplicates(['K', 'L', 'n', 'trial'])
  assert sc.slopes(df) == pytest.approx({(3, 10): -1.0, (5, 10): -1.0, (5, 20): -0.8})
  assert sc.summary(df)['slopes']['K=5,L=20'] == pytest.approx(-0.8)
  csv = tmp_path / 'sc.csv'
  io.write_csv(df, csv)
  fig = sc_plots.plot(str(csv))
  assert len(fig.axes) == 3  # error vs n, normalised, the L sweep (K=5 has two L)
  texts = legend_texts(fig)
  assert 'K=3: slope -1.00' in texts and 'L=20: slope -0.80' in texts
  assert 'MLE asymptotics (Fisher information)' in texts  # the dashed lines are explained
  assert '²_F' not in ' '.join(ax.get_ylabel() for ax in fig.axes)
  assert 'sd' in fig.axes[0].get_title()  # the band convention is stated
  w, h = png_size(fig, tmp_path, 'sc')
  assert 2000 < w < 2800 and 550 < h < 800
  # Without an L sweep: two panels.
  io.write_csv(sc_frame({10: -1.0}), csv)
  assert len(sc_plots.plot(str(csv)).axes) == 2


# --- the worked example (paper Fig. 1) ---


def test_example_quantities_by_hand_and_columns_round_trip(tmp_path):
  W = np.array([float(v) for v in example.DEFAULT_W]).reshape(3, 3)
  X = np.array([0, 1, 0])
  q = example.example_quantities(W, X)
  P = np.exp(W.T) / np.exp(W.T).sum(1, keepdims=True)  # P = row-softmax(W^T)
  pi = np.array([2, 1, 0]) * P[0] / (np.array([2, 1, 0]) * P[0]).sum()  # m_j(X) P[x_L, j]
  np.testing.assert_allclose(q['P'], P, rtol=1e-6)
  np.testing.assert_allclose(q['pi'], pi, rtol=1e-6)
  np.testing.assert_allclose(q['att_output'], pi, atol=1e-6)  # Lemma 2.2
  cols = example.to_columns(q, tuple(example.QUANTITIES))
  back = example.from_columns(*(cols[c] for c in example.KEYS + ['value']))
  assert list(back) == list(example.QUANTITIES)
  for name, v in q.items():
    np.testing.assert_array_equal(back[name], v if name in example.MATRICES else np.ravel(v))
  with pytest.raises(ValueError, match='negative'):
    example.from_columns(['P'], [-1], [0], [0.5])
  csv = tmp_path / 'ex.csv'
  io.write_csv(pd.DataFrame(example.to_columns(q, example.CCMC_QUANTITIES)), csv)
  fig = example_plots.plot(str(csv))
  assert len(fig.axes) == 4 + 0  # heat maps carry no colour bar
  assert '[1, 2, 1]' in fig._suptitle.get_text()  # pylint: disable=protected-access
  w, h = png_size(fig, tmp_path, 'ex')
  assert 2200 < w < 2800 and 500 < h < 800
  with pytest.raises(io.ResultsError, match='lacks quantity'):
    io.write_csv(pd.DataFrame(example.to_columns(q, ('W', 'P'))), csv)
    example_plots.plot(str(csv))
  assert model.transition_matrix(W.astype(np.float32)).shape == (3, 3)


# --- positional encoding (paper Def. 2.4 / Lemma 2.5) ---

EQ = pe.EqSweep(K_max=4, L_max=5, d_pos=2, prompts=6)
FIT = pe.FitSetting(K=3, L=4, ns=(200, 600))


def test_positional_equivalence_cell_equals_a_loop_and_is_exact():
  keys = pe.eq_keys(0, 3, 4, 3)
  out = pe.run_eq_cell(3, 4, (False, True), EQ, keys)
  run_trial = jax.jit(pe.make_run_eq_trial(3, 4, (True,), EQ))  # the cross-attention half
  loop = stack([run_trial(k) for k in keys])
  for name in ('max_abs_diff', 'mean_abs_diff'):
    assert out[name].shape == (3, 2, len(pe.ROUTES))
    np.testing.assert_allclose(out[name][:, 1:], loop[name], rtol=1e-5, atol=1e-8)
  assert float(out['max_abs_diff'].max()) < 1e-5
  cols = pe.eq_columns(3, 4, (False, True), out, 0, EQ.prompts)
  assert len(cols['trial']) == 3 * 2 * 3 and set(cols['route']) == set(pe.ROUTES)
  assert pe.eq_cells(['3', '3'], ['4'], ['self', 'cross']) == [(3, 4, False), (3, 4, True)]


def test_positional_fit_equals_a_loop_and_rows(tmp_path):
  keys = pe.fit_keys(0, FIT, 2)
  out = {k: np.asarray(v) for k, v in pe.run_fit(FIT, pe.generate(FIT, keys)).items()}
  run_trial = jax.jit(pe.make_run_fit_trial(FIT))
  loop = stack([run_trial(k) for k in keys])
  for name in ('P_error', 'w_error', 'w_hat'):
    # float32 Newton fits, batched vs one at a time: round-off only (seen up to 1.1e-5 relative
    # in w_error when the XLA options of an in-process experiment run came first).
    np.testing.assert_allclose(out[name], loop[name], rtol=5e-5, atol=1e-8, err_msg=name)
  assert not out['invalid'].any()
  np.testing.assert_allclose(out['w_true'].sum(-1), 1, rtol=1e-6)
  rows, wrows = pe.fit_columns(FIT, out, 0)
  assert list(rows) == ['K', 'L', 'cross', 'n', 'trial', 'metric', 'seed', 'error',
                        'newton_iters', 'invalid']
  assert list(wrows) == ['K', 'L', 'cross', 'n', 'trial', 'position', 'seed', 'w_true', 'w_hat']
  assert len(rows['trial']) == 2 * 2 * 2 and len(wrows['trial']) == 2 * 2 * 4
  np.testing.assert_allclose(pd.DataFrame(wrows).groupby(['n', 'trial'])['w_hat'].sum(), 1,
                             rtol=1e-5)
  # The figure from these rows and a synthetic equivalence table.
  eq = pe.eq_columns(3, 4, (False, True), pe.run_eq_cell(3, 4, (False, True), EQ,
                                                         pe.eq_keys(0, 3, 4, 2)), 0, EQ.prompts)
  paths = [tmp_path / f'{n}.csv' for n in ('pe', 'pe_w', 'pe_eq')]
  for cols, path in zip((rows, wrows, eq), paths):
    io.write_csv(pd.DataFrame(cols), path)
  with open(tmp_path / 'pe_eq.meta.json', 'w') as f:
    json.dump({'tol': 3e-5}, f)
  fig = pe_plots.plot(*map(str, paths))
  assert len(fig.axes) == 3
  texts = legend_texts(fig)
  assert 'tolerance 3e-05' in texts and sum('slope' in t for t in texts) == 2
  assert 'sd' in fig.axes[1].get_title()
  # The mean lies inside its band (the band is mean ± 1 sd, clipped).
  band = fig.axes[1].collections[0].get_paths()[0].vertices[:, 1]
  mean = fig.axes[1].lines[0].get_ydata()
  assert band.min() <= mean.min() and mean.max() <= band.max()
  w, h = png_size(fig, tmp_path, 'pe')
  assert 2300 < w < 3000 and 600 < h < 900


def test_positional_slopes_on_synthetic_frame():
  n = np.repeat([100, 1000], 2)
  df = pd.DataFrame({'metric': ['P_error'] * 4 + ['w_error'] * 4, 'n': np.tile(n, 2),
                     'error': np.concatenate([1 / n, 1 / np.sqrt(n)])})
  assert pe.slopes(df) == pytest.approx({'P_error': -1.0, 'w_error': -0.5})
