"""The helpers every figure shares: trial keys, slopes, the zero-diagonal chain, the band
convention, atomic figure saving, quick settings and ``common.main`` (all in process)."""
import json
import os

from absl import flags
from absl.testing import flagsaver
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import model
from ccmc_jax.trials import common as tc
from experiments import common
from experiments.plots import style

FLAGS = flags.FLAGS
if not FLAGS.is_parsed():
  FLAGS.mark_as_parsed()


def test_trial_keys_are_the_documented_fold_in_chain():
  root = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(7), 5), 10)
  want = np.stack([np.asarray(jax.random.fold_in(root, i)) for i in range(4)])
  np.testing.assert_array_equal(np.asarray(tc.trial_keys(7, 5, 10, trials=4)), want)
  np.testing.assert_array_equal(np.asarray(tc.setting_key(7, 5, 10)), np.asarray(root))
  # No path: fold_in(PRNGKey(seed), i); bools and numpy ints fold in as their integer value.
  np.testing.assert_array_equal(np.asarray(tc.trial_keys(3, trials=2)[1]),
                                np.asarray(jax.random.fold_in(jax.random.PRNGKey(3), 1)))
  np.testing.assert_array_equal(np.asarray(tc.setting_key(0, np.int64(3), True)),
                                np.asarray(tc.setting_key(0, 3, 1)))
  # Other settings, other keys; the first trials do not depend on how many are drawn.
  assert not np.array_equal(tc.trial_keys(7, 5, 10, trials=2), tc.trial_keys(7, 10, 5, trials=2))
  np.testing.assert_array_equal(tc.trial_keys(7, 5, trials=5)[:2], tc.trial_keys(7, 5, trials=2))


def test_slopes_of_exact_power_laws():
  n = np.array([10.0, 100.0, 1000.0])
  assert tc.loglog_slope(n, 3.0 / n) == pytest.approx(-1.0)
  assert tc.loglog_slope(n, n ** 0.5) == pytest.approx(0.5)
  frame = pd.DataFrame({'K': np.repeat([2, 3], 6), 'n': np.tile(np.repeat(n[:2], 3), 2),
                        'trial': np.tile(np.arange(3), 4)})
  # Per K, errors K/n * (1, 2, 3) over trials: the mean is 2K/n, slope -1.
  frame['error'] = frame['K'] / frame['n'] * (1 + frame['trial'])
  assert tc.mean_slopes(frame, 'K') == pytest.approx({2: -1.0, 3: -1.0})
  assert tc.mean_slopes(frame[frame['n'] == 10], 'K') == {}  # one n: no slope


def test_chain_log_P_zero_diagonal_is_model_zero_diagonal():
  A = jax.random.normal(jax.random.PRNGKey(0), (5, 5))
  np.testing.assert_allclose(np.exp(tc.chain_log_P(A)), jax.nn.softmax(A, -1), rtol=1e-6)
  Q = np.exp(np.asarray(tc.chain_log_P(A, True)))
  np.testing.assert_allclose(Q, model.zero_diagonal(jax.nn.softmax(A, -1)), rtol=1e-5, atol=1e-7)
  assert (np.diag(Q) == 0).all()
  # zero_diag may be traced: one compilation serves both variants.
  f = jax.jit(tc.chain_log_P)
  np.testing.assert_array_equal(f(A, jnp.bool_(True)), tc.chain_log_P(A, True))


def test_band_contains_its_mean_and_respects_the_range():
  mean, sd = np.array([0.5, 0.9, 1e-3]), np.array([0.2, 0.3, 5e-3])
  lo, hi = style.band_edges(mean, sd, lo=0, hi=1)
  np.testing.assert_allclose(lo, [0.3, 0.6, 0.0])
  np.testing.assert_allclose(hi, [0.7, 1.0, 6e-3])
  lo, hi = style.band_edges(mean, sd, log=True)
  assert (lo > 0).all() and (lo <= mean).all() and (mean <= hi).all()
  assert lo[2] == pytest.approx(1e-4)  # mean - sd < 0: clipped at mean / 10
  assert style.slope_label('K=5', -0.987) == 'K=5: slope -0.99'


def test_save_writes_png_and_pdf_atomically(tmp_path):
  fig, ax = style.subplots(figsize=(2, 1))
  ax.plot([0, 1], [0, 1])
  paths = style.save(fig, str(tmp_path), 'f')
  assert sorted(os.listdir(tmp_path)) == ['f.pdf', 'f.png']  # no temporary left
  import matplotlib.image  # pylint: disable=import-outside-toplevel
  h, w = matplotlib.image.imread(paths[0]).shape[:2]
  assert 100 < w < 400 and 50 < h < 250  # 2 x 1 inches at 150 dpi, tight box


def test_main_runs_a_spec_with_two_tables_and_quick_settings(tmp_path):
  calls = []

  def run(checked, results):
    calls.append(checked)
    results['toy_extra'].add({'i': [0, 1], 'v': [1.0, 2.0]})
    results['toy'].add({'n': [10, 100], 'trial': 0, 'error': [0.1, 0.01]})

  def plot(csv, extra_csv):
    fig, ax = style.subplots()
    df = pd.read_csv(csv)
    ax.plot(df['n'], df['error'])
    assert os.path.exists(extra_csv)
    return fig

  spec = common.Spec(
      name='toy', flag_names=[], validate=lambda: 'checked', run=run, plot=plot,
      tables=[common.Table('toy', ['n', 'trial'], lambda f: {'slope': tc.mean_slopes(
          f.assign(g=0), 'g')[0]}), common.Table('toy_extra', ['i'], resume=False)],
      message=lambda s: f'slope {s["slope"]:.2f}')
  with flagsaver.flagsaver(results_dir=str(tmp_path / 'r'), figures_dir=str(tmp_path / 'f')):
    common.apply_quick({'seed': 3})
    assert FLAGS.seed == 3
    common.main(spec)
  assert calls == ['checked']
  with open(tmp_path / 'r' / 'toy.meta.json') as f:
    meta = json.load(f)
  assert meta['status'] == 'complete' and meta['slope'] == pytest.approx(-1.0)
  assert meta['flags']['seed'] == 3
  assert sorted(os.listdir(tmp_path / 'f')) == ['toy.pdf', 'toy.png']
  assert len(pd.read_csv(tmp_path / 'r' / 'toy_extra.csv')) == 2
