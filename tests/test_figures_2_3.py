"""Figures 2 and 3: co-occurrence graphs and identifiability (Thm 3.4) against a brute-force rank
reference, and the two experiments as a user runs them (quick smoke runs and bad inputs)."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_module

from ccmc_jax import identifiability



run = run_module


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
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import sampling  # pylint: disable=import-outside-toplevel
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


# --- experiments (subprocesses: each costs a JAX import) ---


def test_attention_equivalence_quick(tmp_path):
  r = run('experiments.attention_equivalence', '--quick', tmp=tmp_path)
  assert r.returncode == 0, r.stderr
  df = pd.read_csv(tmp_path / 'results' / 'attention_equivalence.csv')
  for c in ('K', 'L', 'cross', 'trial', 'seed', 'prompts', 'count', 'max_abs_diff',
            'mean_abs_diff', 'max_sum_error'):
    assert c in df.columns, c
  # --quick: K in {3, 10}, L in {1, 10}; cross-attention skips L = 1; 8 trials per cell.
  assert len(df) == (4 + 2) * 8
  with open(tmp_path / 'results' / 'attention_equivalence.meta.json') as f:
    meta = json.load(f)
  assert meta['status'] == 'complete' and meta['max_abs_diff'] <= 1e-5 and meta['passed']
  assert df['max_abs_diff'].max() <= 1e-5
  for ext in ('png', 'pdf'):
    assert (tmp_path / 'figures' / f'attention_equivalence.{ext}').stat().st_size > 0


def test_self_vs_cross_quick(tmp_path):
  r = run('experiments.self_vs_cross', '--quick', tmp=tmp_path)
  assert r.returncode == 0, r.stderr
  df = pd.read_csv(tmp_path / 'results' / 'self_vs_cross.csv')
  for c in ('attention', 'K', 'L', 'n', 'trial', 'seed', 'error', 'identifiable_rows',
            'predicted_floor'):
    assert c in df.columns, c
  assert len(df) == 2 * 3 * 4  # attentions x quick n grid x quick trials
  K = int(df['K'].iloc[0])
  assert (df[df['attention'] == 'self']['identifiable_rows'] == K).all()
  assert (df[df['attention'] == 'cross']['identifiable_rows'] == 0).all()
  assert (df[df['attention'] == 'self']['predicted_floor'] == 0).all()
  assert (df[df['attention'] == 'cross']['predicted_floor'] > 0.01).all()
  with open(tmp_path / 'results' / 'self_vs_cross.meta.json') as f:
    meta = json.load(f)
  assert meta['status'] == 'complete' and meta['self_slope'] < -0.6
  # Even at n = 3000 the cross error (a plateau near 0.2) is several times the self error.
  assert meta['cross_self_ratio_at_max_n'] > 4
  graph = pd.read_csv(tmp_path / 'results' / 'self_vs_cross_graph.csv')
  ident = graph.groupby('attention')['identifiable'].first()
  assert ident['self'] == 1 and ident['cross'] == 0
  assert set(graph['kind']) == {'prompt', 'node', 'edge'}
  for ext in ('png', 'pdf'):
    assert (tmp_path / 'figures' / f'self_vs_cross.{ext}').stat().st_size > 0
