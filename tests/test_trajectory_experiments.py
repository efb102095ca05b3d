"""The collapse, collapse-statistics and trajectory-learning figures: their trial functions in
process (jit(vmap(run_trial)) == a Python loop of run_trial on tiny settings), the summaries on
synthetic tables (including tables that must fail a claim), the figures' content, and one
subprocess run per script (flags -> CSVs -> figure) with small settings."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import io
from ccmc_jax import trajectory
from ccmc_jax.trials import collapse as tcol
from ccmc_jax.trials import collapse_statistics as tstat
from ccmc_jax.trials import common as tc
from ccmc_jax.trials import trajectory_learning as ttl
from conftest import run_module
from experiments.plots import collapse as pcol
from experiments.plots import collapse_statistics as pstat
from experiments.plots import style
from experiments.plots import trajectory_learning as ptl


def loop(run_trial, keys):
  """The reference: run_trial on each key, one at a time, stacked."""
  outs = [run_trial(k) for k in keys]
  return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *outs)


def assert_trees_close(a, b, rtol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7)


# ------------------------------------------------------------------------------ collapse

def test_collapse_vmap_equals_loop_and_example_is_the_sweeps_trial():
  K, T, n = 4, 40, 5
  keys = tc.trial_keys(7, trials=n)
  sweep = tcol.seed_sweep(7, n, K, T, zero_diag=True)  # jit(vmap(run_trial))
  again, other = (tcol.seed_sweep(s, n, K, T, zero_diag=True) for s in (7, 8))
  for k in sweep:  # same seed, same numbers; another seed, other numbers
    np.testing.assert_array_equal(again[k], sweep[k])
  assert not np.array_equal(other['top1'], sweep['top1'])
  ref = loop(jax.jit(tcol.make_run_trial(K, T, zero_diag=True)), keys)
  assert not ref.pop('impossible').any()  # the sweep checks it (and drops it) too
  assert_trees_close({k: sweep[k] for k in ref}, ref)
  np.testing.assert_array_equal(sweep['seed'], np.arange(n))
  assert (sweep['top1'] <= sweep['top2'] + 1e-7).all() and (sweep['top2'] <= 1 + 1e-6).all()
  # The traced example of trial 3 is the sweep's trial 3: same final shares.
  ex = pd.DataFrame(tcol.example(7, 3, K, T, zero_diag=True))
  final = np.sort(ex[ex['t'] == T]['frequency'].to_numpy())[::-1]
  np.testing.assert_allclose([final[0], final[:2].sum()], [sweep['top1'][3], sweep['top2'][3]],
                             rtol=1e-6)
  tokens = ex[ex['emitted'] == 1].sort_values('t')['token'].to_numpy()
  assert len(tokens) == T and not (tokens[1:] == tokens[:-1]).any()  # no token follows itself


def test_collapse_given_scores_and_prompt():
  """A user's P (scores log P) and X0 replace the random ones; zero_diag drops the self-loops
  of the user's P."""
  P = np.full((3, 3), 1 / 3)
  P[0] = [0.98, 0.01, 0.01]
  run_trial = jax.jit(tcol.make_run_trial(3, 200, A=np.log(P), X0=(1, 2, 0), trace=True))
  out = run_trial(jax.random.PRNGKey(0))
  assert np.mean(np.asarray(out['tokens']) == 0) > 0.8  # token 0 absorbs the trajectory
  no_self = jax.jit(tcol.make_run_trial(3, 200, zero_diag=True, A=np.log(P), X0=(1, 2, 0),
                                        trace=True))(jax.random.PRNGKey(0))['tokens']
  assert not (np.asarray(no_self)[1:] == np.asarray(no_self)[:-1]).any()


def test_median_seed_is_the_lower_median():
  assert tcol.median_seed([0.9, 0.2, 0.5]) == 2
  assert tcol.median_seed([0.4, 0.1, 0.9, 0.3]) == 3  # lower median of an even count
  assert tcol.median_seed([0.5, 0.5, 0.5]) == 1  # ties: stable order
  assert tcol.median_seed([0.7]) == 0
  with pytest.raises(ValueError):
    tcol.median_seed([])
  frame = pd.DataFrame({'variant': ['random'] * 3 + ['zero_diag'] * 3, 'seed': [2, 0, 1] * 2,
                        'top1': [0.9, 0.2, 0.5, 0.3, 0.3, 0.4], 'top2': [1.0] * 6})
  s = tcol.sweep_summary(frame)
  # zero_diag by seed: 0.3, 0.4, 0.3: the lower median 0.3 of seeds 0 and 2 in stable order.
  assert s['random']['median_seed'] == 1 and s['zero_diag']['median_seed'] == 2
  np.testing.assert_allclose(s['random']['mean_top1'], 1.6 / 3)


def collapse_csvs(tmp_path, K=4, T=30, n=5, index=None):
  """Synthetic tables: a sweep and an example trajectory (of seed ``index``, default the
  sweep's median seed) cycling through tokens 0, 1, 0, 2, ..."""
  rng = np.random.default_rng(0)
  top1 = rng.uniform(0.3, 0.9, n)
  index = tcol.median_seed(top1) if index is None else index
  tokens = np.array([0, 1, 0, 2] * T)[:T]
  counts = np.cumsum(np.eye(K)[tokens], axis=0) + 1  # X0 = one of each token
  freqs = counts / counts.sum(1, keepdims=True)
  t, token = np.repeat(np.arange(1, T + 1), K), np.tile(np.arange(K), T)
  example = pd.concat([pd.DataFrame({'variant': v, 'seed': index, 't': t, 'token': token,
                                     'frequency': freqs.reshape(-1),
                                     'emitted': (tokens[t - 1] == token).astype(int)})
                       for v in tcol.VARIANTS])
  sweep = pd.concat([pd.DataFrame({'variant': v, 'seed': range(n), 'K': K, 'T': T, 'top1': top1,
                                   'top2': np.minimum(top1 + 0.2, 1)}) for v in tcol.VARIANTS])
  paths = str(tmp_path / 'collapse.csv'), str(tmp_path / 'collapse_seeds.csv')
  io.write_csv(example, paths[0])
  io.write_csv(sweep, paths[1])
  return paths, index


def test_collapse_figure_shows_the_median_example_and_labelled_baselines(tmp_path):
  (csv, seeds_csv), index = collapse_csvs(tmp_path)
  fig = pcol.plot(csv, seeds_csv, snapshots=3)
  axes = np.array(fig.axes).reshape(2, 3)
  assert f'seed {index}' in axes[0, 0].get_title()
  assert f'median of the 5-seed sweep (seed {index})' in fig._suptitle.get_text()
  assert len(axes[0, 0].get_lines()) == 4  # one frequency curve per token
  for ax in axes[:, 2]:
    lines = {l.get_label(): l for l in ax.get_lines()}
    # Each uniform baseline sits with its own histogram: 1/K in top-1's colour, 2/K in top-2's.
    assert lines['top-1 if uniform (1/K)'].get_xdata()[0] == pytest.approx(1 / 4)
    assert lines['top-2 if uniform (2/K)'].get_xdata()[0] == pytest.approx(2 / 4)
    assert lines['top-2 if uniform (2/K)'].get_color() == 'tab:blue'
  grid = axes[0, 1].images[0].get_array()
  assert grid.shape[1] == 10
  np.testing.assert_array_equal(grid[0], [0, 1, 0, 2] * 2 + [0, 1])  # from t = 1
  style.pyplot().close(fig)
  # An example that is not the median seed is not called the median.
  (csv, seeds_csv), other = collapse_csvs(tmp_path, index=(index + 1) % 5)
  fig = pcol.plot(csv, seeds_csv, snapshots=3)
  assert 'median' not in fig._suptitle.get_text()
  assert f'Example trajectories: seed {other}' in fig._suptitle.get_text()
  style.pyplot().close(fig)


@pytest.mark.parametrize('content,why', [('a,b\n1,2\n', 'lacks column'),
                                         ('variant,seed,t,token,frequency,emitted\n'
                                          'random,0,x,0,0.5,1\n', 'non-numeric'),
                                         ('', 'not a readable CSV')])
def test_collapse_figure_rejects_malformed_csv(tmp_path, content, why):
  (tmp_path / 'c.csv').write_text(content)
  (tmp_path / 's.csv').write_text('variant,seed,top1,top2,K\nrandom,0,0.5,0.8,6\n')
  with pytest.raises(io.ResultsError, match=why):
    pcol.plot(str(tmp_path / 'c.csv'), str(tmp_path / 's.csv'))


# -------------------------------------------------------------------- collapse statistics

def test_collapse_statistics_vmap_equals_loop_and_padding_changes_nothing():
  K, T, n = 5, 40, 4
  cells = [('K', K, 5, 1.5), ('L0', K, 7, 1.5)]  # one compilation for K: L0 padded to 7
  got = list(tstat.run_cells(3, cells, ['random', 'zero_diag'], T, n, 0.2, 2,
                             done=lambda row: row['sweep'] == 'L0' or row['variant'] == 'random'))
  assert [(c['sweep'], c['variant']) for c in got] == [('K', 'zero_diag')]
  ref = loop(jax.jit(tstat.make_run_trial(K, 5, 1.5, True, T, 0.2)),
             tc.trial_keys(3, K, 5, trials=n))
  assert_trees_close({k: got[0][k] for k in ref}, ref)
  table = pd.DataFrame(got[0])  # the results rows: one per seed
  assert list(table.columns) == pstat.KEYS + ['root_seed', 'T', 'winner_threshold'] + [
      'winners', 'top1', 'top2', 'collapse_time', 'max_final_freq']
  assert len(table) == n and (table['root_seed'] == 3).all()
  assert table['collapse_time'].between(1, T).all()
  assert (table['max_final_freq'] <= tstat.zero_diag_bound(5, K, T) + 1e-6).all()
  cells = tstat.settings(['4', '8', '4'], ['8', '16'], ['1', '2'], 8)  # a repeated K once
  assert cells == [('K', 4, 4, 1.0), ('K', 8, 8, 1.0), ('L0', 8, 8, 1.0), ('L0', 8, 16, 1.0),
                   ('scale', 8, 8, 1.0), ('scale', 8, 8, 2.0)]


def stat_frame(max_freq, variant='zero_diag', L0=8, K=8, T=100):
  n = len(max_freq)
  return pd.DataFrame({'sweep': 'K', 'K': K, 'L0': L0, 'scale': 1.0, 'variant': variant,
                       'seed': range(n), 'T': T, 'winner_threshold': 0.1, 'winners': 2,
                       'top1': max_freq, 'top2': np.minimum(np.asarray(max_freq) + 0.2, 1),
                       'collapse_time': np.arange(1, n + 1) * 10,
                       'max_final_freq': max_freq})


def test_zero_diagonal_bound_and_summary_claims():
  # K = L0 = 8, T = 100: at most 1 + 50 of the 108 tokens.
  assert tstat.zero_diag_bound(8, 8, 100) == pytest.approx(51 / 108)
  assert tstat.zero_diag_bound(12, 8, 101) == pytest.approx((1 + 4 + 51) / 113)
  ok = tstat.summary(stat_frame([0.3, 51 / 108]))
  assert ok['zero_diag_exact_bound_respected'] and ok['zero_diag_below_half_plus_slack']
  bad = tstat.summary(stat_frame([0.3, 0.48]))  # above 51/108 = 0.472: impossible
  assert not bad['zero_diag_exact_bound_respected'] and bad['zero_diag_below_half_plus_slack']
  worse = tstat.summary(stat_frame([0.9]))
  assert not worse['zero_diag_below_half_plus_slack']
  r = tstat.summary(stat_frame([0.9, 0.4, 0.6], variant='random'))
  assert 'zero_diag_max_final_freq' not in r
  assert r['random_fraction_top1_above_half'] == pytest.approx(2 / 3)


def test_collapse_statistics_figure_bands_stay_in_range_and_legend_is_outside(tmp_path):
  frames = [stat_frame(np.linspace(0.05, 0.99, 6), variant=v, K=k, L0=k)
            for v in tstat.VARIANTS for k in (4, 8)]
  csv = str(tmp_path / 'cs.csv')
  io.write_csv(pd.concat(frames), csv)
  fig = pstat.plot(csv)
  top1 = fig.axes[1]
  assert top1.get_legend() is None and len(fig.legends) == 1  # no legend over the curves
  for band in top1.collections:
    y = band.get_paths()[0].vertices[:, 1]
    assert y.max() <= 1 + 1e-9 and y.min() >= 0  # mean ± sd clipped to [0, 1]
  assert style.BAND in fig._suptitle.get_text()
  labels = [t.get_text() for t in fig.legends[0].get_texts()]
  assert 'random P: mean' in labels and '1/2 + 3/√T' in labels
  style.pyplot().close(fig)


# ------------------------------------------------------------------- trajectory learning

def test_trajectory_learning_trials_vmap_equal_loop():
  K, L0, T_max, n = 4, 6, 50, 3
  keys = tc.trial_keys(0, K, L0, trials=n)
  run_trial = ttl.make_run_trial(K, L0, T_max)
  data = ttl._generate(K, L0, T_max, 1.0)(keys)  # jit(lax.map(run_trial)), as ttl.run uses
  assert_trees_close(data, loop(jax.jit(run_trial), keys))
  # The single-trajectory data set is the trajectory: query t = answer t - 1.
  single = data['single']
  np.testing.assert_array_equal(single.query[:, 1:], single.y[:, :-1])
  np.testing.assert_allclose(single.counts.sum(-1), np.broadcast_to(L0 + np.arange(T_max),
                                                                    (n, T_max)))
  (T, table, rows), = list(ttl.run(0, K, L0, [T_max], n))  # vmap over (source, trial)
  table, rows = pd.DataFrame(table), pd.DataFrame(rows)
  assert T == T_max and list(table['source']) == ['single'] * n + ['iid'] * n
  assert list(rows.columns[:6]) == ptl.KEYS + ['seed'] and len(rows) == 2 * n * K
  # Each sample queries one row: the visits add up to T; the error is the sum of row errors.
  g = rows.groupby(['source', 'trial'], sort=False)
  np.testing.assert_array_equal(g['visits'].sum(), T_max)
  np.testing.assert_allclose(g['row_error'].sum(), table['error'], rtol=1e-5)
  np.testing.assert_array_equal(g['visits'].apply(lambda v: (v > 0).sum()),
                                table['visited_rows'])
  # The single trajectory's visits are the counts of its queries.
  np.testing.assert_array_equal(rows['visits'][:K], np.bincount(single.query[0], minlength=K))
  assert (table['error'] > 0).all() and (table['newton_iters'] > 0).all()


def tl_frame(errors_single, errors_iid, Ts=(100, 1000)):
  rows = []
  for src, errs in (('single', errors_single), ('iid', errors_iid)):
    for T, e in zip(Ts, errs):
      for trial, f in enumerate((0.9, 1.1)):
        rows.append({'source': src, 'K': 3, 'L0': 4, 'T': T, 'trial': trial, 'error': e * f,
                     'visited_rows': 2 if src == 'single' else 3, 'min_visits': 0})
  return pd.DataFrame(rows)


def test_trajectory_learning_summary():
  s = ttl.summary(tl_frame([0.5, 0.4], [0.1, 0.01]))
  assert s['T_max'] == 1000 and s['ratio_single_over_iid'] == pytest.approx(40)
  assert s['iid_slope'] == pytest.approx(-1) and s['single_mean_visited_rows'] == 2
  s = ttl.summary(tl_frame([0.5, 0.4], [0.1, 0.1]))
  assert s['iid_slope'] == pytest.approx(0)  # an IID error that does not fall fails the 1/T claim


def test_trajectory_learning_figure_title_is_the_datas(tmp_path):
  df = tl_frame([0.5, 0.4], [0.1, 0.01])
  rows = []
  for _, r in df.iterrows():
    visits = [r['T'] - 1, 1, 0] if r['source'] == 'single' else [r['T'] // 3] * 3
    for k, v in enumerate(visits):
      rows.append({**r[ptl.KEYS].to_dict(), 'row': k, 'visits': v, 'row_error': 0.1})
  csv, rows_csv = str(tmp_path / 'tl.csv'), str(tmp_path / 'tlr.csv')
  io.write_csv(df, csv)
  io.write_csv(pd.DataFrame(rows), rows_csv)
  fig = ptl.plot(csv, rows_csv)
  title = fig._suptitle.get_text()
  assert 'visits 2.0 of 3 rows, but only 1.0 get >= 100 visits' in title
  assert style.BAND in title and '40x' in fig.axes[0].get_title()
  assert '²_F' not in fig.axes[0].get_ylabel()  # mathtext, not a literal subscript
  style.pyplot().close(fig)


# ------------------------------------------------------------- the scripts, end to end

def test_collapse_script(tmp_path):
  r = run_module('experiments.collapse', '--K=4', '--T=60', '--seeds=9', tmp=tmp_path)
  assert r.returncode == 0, r.stderr
  res = tmp_path / 'results'
  sweep, ex = pd.read_csv(res / 'collapse_seeds.csv'), pd.read_csv(res / 'collapse.csv')
  assert len(sweep) == 2 * 9 and len(ex) == 2 * 60 * 4
  index = tcol.median_seed(sweep[sweep['variant'] == 'random'].sort_values('seed')['top1'])
  assert set(ex['seed']) == {index} and f'seed {index}' in r.stderr
  # The example is the sweep's trajectory of that seed: the same final top-1 share.
  for variant in tcol.VARIANTS:
    final = ex[(ex['variant'] == variant) & (ex['t'] == 60)]['frequency'].max()
    want = sweep[(sweep['variant'] == variant) & (sweep['seed'] == index)]['top1'].item()
    assert final == pytest.approx(want, rel=1e-6)
  with open(res / 'collapse_seeds.meta.json') as f:
    assert json.load(f)['random']['median_seed'] == index
  for ext in ('png', 'pdf'):
    assert (tmp_path / 'figures' / f'collapse.{ext}').stat().st_size > 0


def test_collapse_summary_and_padded_prompt():
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
  a, b = gen(key, log_P, X0, 50), gen(key, log_P, jnp.asarray(Xp), 50)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.freqs, b.freqs, rtol=1e-6)
