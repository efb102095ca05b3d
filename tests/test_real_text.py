"""Real text (issue 13): tokenizer, split, copy events, metrics, CCMC likelihood, bigram baseline,
generation, the corpora, and the script end to end (python_docs --quick) with its bad inputs."""
import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import model
from ccmc_jax import text
from conftest import run_module


def test_tokenize_and_detokenize():
  toks = text.tokenize("Don't PANIC, Arthur: 42 _x!\n(ok)")
  assert toks == ["don't", 'panic', ',', 'arthur', ':', '42', '_', 'x', '!', '(', 'ok', ')']
  vocab = text.build_vocab(toks + ['panic'], 3)
  assert vocab == ['panic', '!', '(', text.UNK]  # count 2 first, then ties by string
  ids = text.encode(['panic', 'zebra', '!'], vocab)
  np.testing.assert_array_equal(ids, [0, 3, 1])
  assert ids.dtype == np.int32
  assert text.detokenize(ids, vocab) == 'panic <unk>!'
  with pytest.raises(text.TextError, match='only 2 distinct tokens'):
    text.build_vocab(['a', 'b', 'a'], 3)


def test_block_split_contiguous_disjoint_seeded():
  s = text.block_split(1003, 20, seed=0)
  assert s.bounds[0] == 0 and s.bounds[-1] == 1003 and np.all(np.diff(s.bounds) >= 50)
  assert [(s.role == r).sum() for r in range(3)] == [16, 2, 2]
  covered = sorted(b for r in range(3) for b in s.blocks(r))
  assert covered == list(zip(s.bounds[:-1], s.bounds[1:]))  # every token in exactly one block
  np.testing.assert_array_equal(s.role, text.block_split(1003, 20, seed=0).role)
  assert not np.array_equal(s.role, text.block_split(1003, 20, seed=1).role)


def test_copy_events_match_a_plain_loop():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 6, 300).astype(np.int32)
  blocks, L = [(0, 40), (40, 45), (100, 220)], 7
  got = text.samples(ids, blocks, L)
  want, total = [], 0
  for s, e in blocks:
    for p in range(s + L, e):  # prompt ids[p-L:p] inside the block, answer ids[p]
      total += 1
      if ids[p] in ids[p - L:p]:
        want.append((p, list(ids[p - L:p]), ids[p]))
  assert got.total == total and len(got.answers) == len(want)
  np.testing.assert_array_equal(got.positions, [w[0] for w in want])
  np.testing.assert_array_equal(got.prompts, [w[1] for w in want])
  np.testing.assert_array_equal(got.answers, [w[2] for w in want])
  assert got.copy_fraction == len(want) / total
  every = text.samples(ids, blocks, L, copy_only=False)
  assert len(every.answers) == total
  pos = text.prompt_positions(blocks, L, 35, 4)  # only (100, 220) holds L + T tokens
  np.testing.assert_array_equal(pos, [107, 133, 159, 185])  # 79 valid, evenly spread


def test_metrics_by_hand():
  x = np.array([[1, 2, 3, 4, 1, 2, 3, 4], [5, 5, 5, 5, 5, 5, 5, 0]])
  # row 0: 4-grams 1234 2341 3412 4123 1234 -> 4 unique of 5; row 1: 5555 x4, 5550 -> 2 of 5
  np.testing.assert_allclose(text.seq_rep_n(x, 4), [1 - 4 / 5, 1 - 2 / 5])
  np.testing.assert_allclose(text.distinct_n(x, 1), [4 / 8, 2 / 8])
  np.testing.assert_allclose(text.distinct_n(x, 2), [4 / 7, 2 / 7])  # 12 23 34 41; 55 50
  m = text.repetition_metrics(x, 6, last=4)  # last 4 tokens: 1 2 3 4 / 5 5 5 0
  np.testing.assert_allclose(m['top1_share'], [1 / 4, 3 / 4])
  np.testing.assert_allclose(m['top5_share'], [1, 1])
  np.testing.assert_array_equal(m['distinct_last'], [4, 2])
  np.testing.assert_allclose(text.running_top1_share([[3, 1, 3, 3, 1, 1, 1]], 4),
                             [[1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 3 / 6, 4 / 7]])


def test_ccmc_heldout_likelihood_matches_numpy_loop():
  rng = np.random.default_rng(1)
  K, L, n = 7, 5, 60
  A = rng.normal(size=(K, K)) * 2
  A[2, 4] = -np.inf  # an impossible transition stays impossible
  X = rng.integers(0, K, (n, L))
  y = np.array([x[rng.integers(L)] for x in X])  # copy events
  y[:5] = (X[:5].max(1) + 1) % K * (X[:5].max(1) < K - 1)  # some answers may be absent
  got = np.asarray(text.ccmc_log_likelihood(A.astype(np.float32), X, y, batch=16))
  P = np.exp(A - A.max(1, keepdims=True))
  for t in range(n):
    m = np.bincount(X[t], minlength=K)
    pi = m * P[X[t, -1]]
    with np.errstate(divide='ignore'):
      want = np.log(pi[y[t]] / pi.sum())
    np.testing.assert_allclose(got[t], want, rtol=1e-5, atol=1e-5)
  with np.errstate(divide='ignore'):
    lib = np.log(np.asarray(model.ccmc_next_token_probs(P / P.sum(1, keepdims=True), X[7])))
  np.testing.assert_allclose(got[7], lib[y[7]], atol=1e-5)
  data = text.Samples(X[5:], y[5:], np.arange(n - 5), n)
  np.testing.assert_allclose(text.heldout_nll(np.zeros((K, K)), data),  # uniform P: m_y / L
                             -np.mean([np.log((X[t] == y[t]).sum() / L) for t in range(5, n)]),
                             rtol=1e-6)


def test_bigram_baseline():
  ids = np.array([0, 1, 1, 2, 0, 1, 2, 2, 0], np.int32)
  blocks = [(0, 4), (4, 9)]  # the pair (2, 0) across the boundary is not counted
  C = text.bigram_counts(ids, blocks, 3)
  want = np.zeros((3, 3))
  for s, e in blocks:
    for a, b in zip(ids[s:e - 1], ids[s + 1:e]):
      want[a, b] += 1
  np.testing.assert_array_equal(C, want)
  log_B = text.bigram_log_matrix(C, 0.5)
  np.testing.assert_allclose(np.exp(log_B), (want + 0.5) / (want + 0.5).sum(1, keepdims=True),
                             rtol=1e-6)
  pairs = [(a, b) for s, e in blocks for a, b in zip(ids[s:e - 1], ids[s + 1:e])]
  np.testing.assert_allclose(text.bigram_nll(log_B, ids, blocks),
                             -np.mean([log_B[a, b] for a, b in pairs]), rtol=1e-6)


def test_generation_follows_the_chain():
  K = 5
  cycle = np.full((K, K), -np.inf, np.float32)
  cycle[np.arange(K), (np.arange(K) + 1) % K] = 0.0  # deterministic i -> i + 1
  out = np.asarray(text.generate_markov(jax.random.PRNGKey(0), cycle, np.array([0, 3]), 7))
  np.testing.assert_array_equal(out, [[1, 2, 3, 4, 0, 1, 2], [4, 0, 1, 2, 3, 4, 0]])
  # CCMC: the next token is in the context. With the cycle P and a context holding 0..K-1 the
  # growing chain follows the cycle; with a window of 2 the prompt [3, 4] can only emit 3 or 4,
  # and the cycle row of 4 allows only 0, absent: pi falls back to m (never NaN).
  X = np.array([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
  grow = np.asarray(text.generate_ccmc(jax.random.PRNGKey(1), cycle, X, 6))
  np.testing.assert_array_equal(grow, [[0, 1, 2, 3, 4, 0]] * 2)
  win = np.asarray(text.generate_ccmc(jax.random.PRNGKey(1), cycle, X, 40, window=2))
  assert set(win[:, 0]) <= {3, 4} and win.min() >= 0 and win.max() < K
  # A random P: every token is copied from the current context (all of it, or the last L).
  log_P = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(2), (12, 12)) * 2)
  X = np.random.default_rng(3).integers(0, 12, (6, 4))
  for window in (None, 4):
    out = np.asarray(text.generate_ccmc(jax.random.PRNGKey(4), log_P, X, 30, window=window))
    for x, y in zip(X, out):
      seq = list(x) + list(y)
      for t in range(4, len(seq)):
        assert seq[t] in seq[:t] if window is None else seq[t] in seq[t - 4:t]
    assert len(set(out.ravel())) > 1


def test_summary_ratios_and_must_show_flags():
  from ccmc_jax.trials import real_text
  cols = {'source': ['ccmc', 'ccmc', 'ccmc_window', 'bigram', 'corpus'],
          'seq_rep_4': [0.5, 0.7, 0.9, 0.1, 0.15]}
  fit = {'model': ['mle', 'uniform_P', 'bigram_P'], 'heldout_nll': [1.0, 2.0, 1.5],
         'copy_fraction': [0.6] * 3}
  s = real_text.summary(cols, fit)
  assert s['mean_seq_rep_4']['ccmc'] == pytest.approx(0.6)
  assert s['ccmc_over_corpus_seq_rep_4'] == pytest.approx(4.0)
  assert s['ccmc_over_bigram_seq_rep_4'] == pytest.approx(6.0)
  assert s['mle_below_both_baselines'] and s['ccmc_seq_rep_4_at_least_3x']
  fit['heldout_nll'] = [1.6, 2.0, 1.5]
  cols['seq_rep_4'][-1] = 0.25
  s = real_text.summary(cols, fit)
  assert not s['mle_below_both_baselines'] and not s['ccmc_seq_rep_4_at_least_3x']


def test_corpora_readers(tmp_path):
  kjv = text.read_kjv()
  assert kjv.lstrip().startswith('In the beginning God created')
  assert kjv.rstrip().endswith('Amen.') and 'Jesus' in kjv[len(kjv) // 2:]
  assert not any(c.isdigit() for c in kjv[:5000])  # verse references stripped
  gen = kjv.find('And God said, Let there be light')
  assert 0 < gen < kjv.find('The book of the generation of Jesus Christ')
  docs = text.read_python_docs()
  assert 400_000 < len(docs) and 'assert' in docs
  good = tmp_path / 'ok.txt'
  good.write_text('héllo world\n', encoding='utf-8')
  assert text.read_text_file(good) == 'héllo world\n'


BAD_CORPORA = [
    ('missing', None, 'does not exist'),
    ('empty', b'  \n\n', 'is empty'),
    ('binary', b'abc\x00def', 'binary'),
    ('latin1', 'café'.encode('latin-1') * 10, 'not UTF-8'),
    ('small', b'the cat sat on the mat. ' * 400, 'distinct tokens'),
]


@pytest.mark.parametrize('name,content,why', BAD_CORPORA, ids=[b[0] for b in BAD_CORPORA])
def test_bad_corpus_file_one_line_exit_2_no_file(tmp_path, name, content, why):
  path = tmp_path / f'{name}.txt'
  if content is not None:
    path.write_bytes(content)
  r = run_module('experiments.real_text', f'--corpus_file={path}', '--quick', tmp=tmp_path)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: --corpus_file={path} '), r.stderr
  assert why in lines[0], lines[0]
  for d in ('results', 'figures'):
    assert not os.path.exists(tmp_path / d) or not os.listdir(tmp_path / d)


def test_python_docs_quick_end_to_end(tmp_path):
  r = run_module('experiments.real_text', '--corpus=python_docs', '--quick', '--T=100',
                 '--ridge=1e-5,1e-4', tmp=tmp_path)
  assert r.returncode == 0, r.stderr
  res = tmp_path / 'results'
  rows = pd.read_csv(res / 'real_text.csv')
  assert sorted(set(rows['source'])) == ['bigram', 'ccmc', 'ccmc_window', 'corpus']
  assert len(rows) == 4 * 100 and rows.groupby('source')['prompt'].nunique().eq(100).all()
  for c in ('seq_rep_4', 'distinct_1', 'distinct_2', 'top1_share', 'top5_share'):
    assert rows[c].between(0, 1).all(), c
  fit = pd.read_csv(res / 'real_text_fit.csv').set_index('model')
  assert sorted(fit.index) == ['bigram_P', 'mle', 'uniform_P']
  assert fit['n_train'].gt(1000).all() and fit['copy_fraction'].between(0.3, 1).all()
  assert fit.loc['mle', 'heldout_nll'] < fit.loc['uniform_P', 'heldout_nll']
  assert fit.loc['mle', 'ridge'] in [float(x) for x in fit.loc['mle', 'ridge_grid'].split(';')]
  curves = pd.read_csv(res / 'real_text_curves.csv')
  assert len(curves) == 4 * 100 and curves['top1_mean'].between(0, 1).all()
  with open(res / 'real_text_fit.meta.json') as f:
    meta = json.load(f)
  assert meta['status'] == 'complete' and meta['choices']['ridge'] in meta['choices'][
      'ridge_grid']
  assert os.path.getsize(tmp_path / 'figures' / 'real_text.png') > 10_000
