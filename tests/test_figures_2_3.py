"""Figures 2 and 3: co-occurrence graphs and identifiability (Thm 3.4) against a brute-force rank
reference, and the two experiments' trials (batched == a per-trial loop) and figures, in process."""
import jax
import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import identifiability
from ccmc_jax import io
from ccmc_jax import sampling
from ccmc_jax.trials import attention_equivalence as ae
from ccmc_jax.trials import ccmc_example as example
from ccmc_jax.trials import self_vs_cross as svc
from experiments import common
from experiments.plots import attention_equivalence as ae_plots
from experiments.plots import self_vs_cross as svc_plots
from experiments.plots import style

# As the experiments do: compiled programs are reused across runs (never changes a number).
common.enable_compilation_cache()


def difference_matrix(X, k, K, cross):
  """Rows e_i - e_j for every pair of keys i, j of every prompt with query k: the score
  differences A[k, i] - A[k, j] that pi^X reveals (Lemma 2.2: a softmax over the key set)."""
  rows = [np.zeros(K)]
  for x in X:
    if x[-1] != k:
      continue
    keys = sorted(set((x[:-1] if cross else x).tolist()))
    for i in keys:
      for j in keys:
        if i < j:
          rows.append(np.eye(K)[i] - np.eye(K)[j])
  return np.array(rows)


def reference(X, k, K, cross):
  """Brute force: (identifiable, rank, same[i, j] = A[k,i] - A[k,j] is determined)."""
  D = difference_matrix(X, k, K, cross)
  rank = np.linalg.matrix_rank(D)
  same = np.zeros((K, K), bool)
  for i in range(K):
    for j in range(K):
      # e_i - e_j is in the row space iff appending it does not raise the rank.
      same[i, j] = np.linalg.matrix_rank(np.vstack([D, np.eye(K)[i] - np.eye(K)[j]])) == rank
  return rank == K - 1, rank, same


@pytest.mark.parametrize('cross', [False, True])
def test_cooccurrence_graph_matches_rank_of_revealed_differences(cross):
  rng = np.random.default_rng(0)
  checked = {True: 0, False: 0}
  for _ in range(150):
    K = int(rng.integers(2, 6))
    L = int(rng.integers(2 if cross else 1, 5))
    X = rng.integers(0, K, size=(int(rng.integers(1, 9)), L))
    g = identifiability.cooccurrence_graph(X, None, cross, K=K)
    np.testing.assert_array_equal(g.queries, np.arange(K))
    for k in range(K):
      ident, rank, same = reference(X, k, K, cross)
      assert g.identifiable[k] == ident, (X, k)
      checked[bool(ident)] += 1
      present = g.present[k]
      # Each component leaves one free offset: rank = present tokens - components.
      assert rank == present.sum() - g.n_components[k], (X, k)
      for i in range(K):
        for j in range(K):
          if i != j and present[i] and present[j]:
            assert (g.components[k, i] == g.components[k, j]) == same[i, j], (X, k, i, j)
      # Adjacency: prompts with query k holding both i and j among the keys (a literal loop).
      keys = [set((x[:-1] if cross else x).tolist()) for x in X if x[-1] == k]
      for i in range(K):
        assert present[i] == any(i in s for s in keys)
        for j in range(K):
          want = 0 if i == j else sum(i in s and j in s for s in keys)
          assert g.adjacency[k, i, j] == want
      assert g.prompts[k] == len(keys)
    # Minimum-norm scores consistent with the revealed differences: the projection of A[k]
    # onto the row space of the difference matrix (pseudo-inverse), row by row.
    A = rng.normal(size=(K, K))
    A_mn = identifiability.min_norm_scores(A, identifiability.component_labels(g))
    for k in range(K):
      D = difference_matrix(X, k, K, cross)
      np.testing.assert_allclose(A_mn[k], np.linalg.pinv(D) @ D @ A[k], atol=1e-10)
  assert min(checked.values()) >= 20, checked  # both outcomes exercised


def test_hand_made_cases():
  # Self-attention: the query joins every key set, so G_0 is connected; all tokens present.
  X = np.array([[1, 2, 0], [3, 4, 0]])
  self_g = identifiability.cooccurrence_graph(X, 0, cross=False)
  assert self_g.identifiable[0] and self_g.n_components[0] == 1 and self_g.covers[0]
  # Cross-attention on the same prompts: {1, 2} and {3, 4}, and the query 0 is never a key.
  cross_g = identifiability.cooccurrence_graph(X, 0, cross=True)
  assert cross_g.n_components[0] == 2 and not cross_g.covers[0] and not cross_g.identifiable[0]
  np.testing.assert_array_equal(cross_g.components[0], [-1, 0, 0, 1, 1])
  # Bridging the groups connects it; coverage still fails until 0 is a key of a 0-query prompt.
  X2 = np.vstack([X, [2, 3, 0]])
  g = identifiability.cooccurrence_graph(X2, 0, cross=True)
  assert g.connected[0] and not g.covers[0] and not g.identifiable[0]
  g = identifiability.cooccurrence_graph(np.vstack([X2, [0, 4, 0]]), 0, cross=True)
  assert g.identifiable[0]
  # Uncovered token under self-attention: K = 6 but token 5 never appears.
  g = identifiability.cooccurrence_graph(X, 0, cross=False, K=6)
  assert g.connected[0] and not g.covers[0] and not g.identifiable[0]
  assert g.components[0, 5] == -1
  # A query that never occurs: no prompts, no components, not identifiable.
  g = identifiability.cooccurrence_graph(X, [3], cross=False)
  assert g.prompts[0] == 0 and g.n_components[0] == 0 and not g.identifiable[0]
  assert not g.all_identifiable
  # Labels of component_labels: uncovered tokens get blocks of their own.
  np.testing.assert_array_equal(identifiability.component_labels(cross_g)[0], [2, 0, 0, 1, 1])


@pytest.mark.parametrize('args,match', [
    (([[0, -1, 2]],), '>= 0'),
    (([[0, 1, 5]], None, False, 3), 'K=3'),
    (([[0], [1]], None, True), 'L >= 2'),
    (([[0, 1]], 7), 'query'),
    ((np.zeros((0, 3), int),), 'non-empty'),
    (([[0.5, 1.0]],), 'integer'),
])
def test_bad_inputs_raise(args, match):
  with pytest.raises(ValueError, match=match):
    identifiability.cooccurrence_graph(*args)


def test_two_group_prompts_disconnect_cross_attention_only():
  K, L = 6, 4
  X = np.asarray(sampling.sample_prompts(jax.random.PRNGKey(0), 2000, L,
                                         sampling.two_group_prompt(K, L)))
  self_g = identifiability.cooccurrence_graph(X, None, False, K=K)
  cross_g = identifiability.cooccurrence_graph(X, None, True, K=K)
  assert self_g.all_identifiable
  assert not cross_g.identifiable.any() and (cross_g.n_components == 2).all()
  assert cross_g.covers.all()  # coverage holds: connectivity is what fails
  for k in range(K):
    ident, _, _ = reference(X[:100], k, K, True)
    assert not ident


# --- the experiments' trials and figures, in process ---


def stack(rows):
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def png_width_height(fig, tmp_path, name):
  png, _ = style.save(fig, str(tmp_path), name)
  return matplotlib.image.imread(png).shape[1::-1]


def test_attention_equivalence_cell_equals_a_loop_and_its_figure(tmp_path):
  assert ae.cells(['3'], ['1', '4'], ['self', 'cross']) == [
      (3, 1, False), (3, 4, False), (3, 4, True)]  # cross-attention needs L >= 2
  sweep = ae.Sweep(K_max=4, L_max=5, prompts=6)
  cell = ae.Cell(3, 4, True)
  keys = ae.keys(0, cell, 3)
  out = {k: np.asarray(v) for k, v in ae.run_cell(cell, sweep, keys).items()}
  loop = stack([jax.jit(ae.make_run_trial(cell, sweep))(k) for k in keys])
  for name in ae.COLUMNS:
    # float32 rounding: the differences themselves are ~1e-8, the probabilities ~1e-1.
    np.testing.assert_allclose(out[name], loop[name], rtol=1e-6, atol=3e-7, err_msg=name)
  assert out['max_abs_diff'].max() <= 1e-5 and out['max_sum_error'].max() <= 1e-5
  assert out['attention'].shape == (3, 3)
  np.testing.assert_allclose(out['attention'].sum(-1), 1, rtol=1e-5)
  # A cell of 3 trials x 6 prompts, as the experiment writes it; the summary and the figure.
  df = pd.DataFrame({'K': 3, 'L': 4, 'cross': 1, 'trial': np.arange(3), 'seed': 0, 'prompts': 6,
                     'count': 18, **{k: out[k] for k in ae.COLUMNS[:3]}})
  worst, pairs, per_cell = ae.summary(df)
  assert worst == out['max_abs_diff'].max() and pairs == 18 and len(per_cell) == 1
  pts = pd.DataFrame({'K': 3, 'L': 4, 'cross': 1, 'trial': np.repeat(np.arange(3), 3),
                      'token': np.tile(np.arange(3), 3), 'attention': out['attention'].ravel(),
                      'ccmc': out['ccmc'].ravel()})
  W = np.array([float(v) for v in example.DEFAULT_W]).reshape(3, 3)
  q = example.example_quantities(W, np.array([0, 1, 0]))
  ex = pd.DataFrame(example.to_columns(q, tuple(example.QUANTITIES)))
  paths = [str(tmp_path / f'{n}.csv') for n in ('ae', 'ae_points', 'ae_example')]
  for frame, path in zip((df, pts, ex), paths):
    io.write_csv(frame, path)
  fig = ae_plots.plot(*paths)
  assert len(fig.axes) == 8
  legend = fig.axes[2].get_legend()  # panel (c): a short proxy line, not the wide marker
  assert [t.get_text() for t in legend.get_texts()] == [r'CCMC $\pi^X_k$ (panels f-g)']
  assert legend.get_lines()[0].get_marker() in ('None', '', None)
  assert 'tolerance 1e-05' in [t.get_text() for t in fig.axes[7].get_legend().get_texts()]
  w, h = png_width_height(fig, tmp_path, 'ae')
  assert 2600 < w < 3400 and 1100 < h < 1500


def test_self_vs_cross_trials_equal_a_loop_and_identifiability():
  setting = svc.Setting(K=4, L=5, ns=(200, 400))
  keys = svc.keys(0, setting, 2)
  out = dict(svc.run_setting(setting, keys))
  assert (out[400]['self']['identifiable_rows'] == 4).all()
  assert (out[400]['cross']['identifiable_rows'] == 0).all()  # two groups: never connected
  assert (out[400]['self']['predicted_floor'] == 0).all()
  assert (out[400]['cross']['predicted_floor'] > 0.01).all()
  _, _, data = svc.generate(setting, keys)
  run_trial = jax.jit(svc.make_run_trial(setting._replace(ns=(400,)), svc.capacity(data, 4)))
  loop = stack([run_trial(k) for k in keys])  # (trials, 1, attentions)
  for a, attention in enumerate(svc.ATTENTIONS):
    np.testing.assert_allclose(out[400][attention]['error'], loop['error'][:, 0, a], rtol=1e-5)
  # Cross-attention plateaus: at n = 400 already several times the self-attention error.
  assert out[400]['cross']['error'].mean() > 2 * out[400]['self']['error'].mean()


def svc_frame():
  """Synthetic results: self error 1/n, cross error 0.2 + 1/n; 2 trials."""
  rows = []
  for attention in svc.ATTENTIONS:
    for n in (100, 1000, 10000):
      for t in range(2):
        e = (1 / n if attention == 'self' else 0.2 + 1 / n) * (1 + 0.1 * t)
        rows.append(dict(attention=attention, K=6, L=6, n=n, trial=t, seed=0, error=e,
                         identifiable_rows=6 if attention == 'self' else 0,
                         predicted_floor=0.0 if attention == 'self' else 0.21, newton_iters=5))
  return pd.DataFrame(rows)


def test_self_vs_cross_summary_graph_and_figure(tmp_path):
  df = svc_frame()
  stats = svc.summary(df)
  assert stats['self_slope'] == pytest.approx(-1.0)
  assert stats['cross_self_ratio_at_max_n'] == pytest.approx(0.2001 / 0.0001)
  assert stats['cross_predicted_floor_at_max_n'] == pytest.approx(0.21)
  prompts = np.array([[1, 2, 3, 0], [3, 1, 1, 0], [4, 5, 4, 0], [5, 5, 4, 0], [2, 4, 5, 1]])
  graph = pd.DataFrame(svc.graph_columns(prompts, 0))
  ident = graph.groupby('attention')['identifiable'].first()
  assert ident['self'] == 1 and ident['cross'] == 0
  assert set(graph['kind']) == {'prompt', 'node', 'edge'}
  nodes = graph[(graph['kind'] == 'node') & (graph['attention'] == 'cross')]
  assert nodes['component'].tolist() == [-1, 0, 0, 0, 1, 1]  # {1,2,3}, {4,5}; 0 never a key
  paths = [str(tmp_path / 'svc.csv'), str(tmp_path / 'svc_graph.csv')]
  io.write_csv(df, paths[0])
  io.write_csv(graph, paths[1])
  fig = svc_plots.plot(*paths)
  assert len(fig.axes) == 3
  texts = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
  assert texts[0] == 'self: slope -1.00; identifiable rows 6/6', texts
  title = fig._suptitle.get_text()  # pylint: disable=protected-access
  assert 'length L = 4' in title and 'length L = 6' in title  # both prompt lengths stated
  assert 'sd' in fig.axes[2].get_title()
  w, h = png_width_height(fig, tmp_path, 'svc')
  assert 2000 < w < 2600 and 750 < h < 1000
