"""A trained LM beside the CCMC (experiments.lm_repetition, lm_distillation) on TINY random
GPT-2 folders written by test_gpt2_panel's helpers: the batched sliding-window decoder against
step-by-step argmax / softmax of a literal float64 numpy forward pass on each window, one
compilation for greedy and every temperature, the copy-law KL / NLL against numpy loops, the
chunked NLL against a loop, the folder-vs-vocabulary checks, and --quick runs of both scripts."""
import json
import math
import os

import jax
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import gpt2 as g2
from ccmc_jax import text
from ccmc_jax import tolerances
from ccmc_jax.trials import lm_distillation as dist
from ccmc_jax.trials import lm_repetition as lm
from conftest import run_module
from test_gpt2_panel import make_folder, np_forward

S, VOCAB, D = 8, 40, 16  # decode tests: n_positions 8, so 12 steps after 5 tokens slide
SIZES = dict(n_layer=2, n_head=2, n_embd=D, vocab_size=VOCAB, n_positions=S)
K_QUICK = 50  # the scripts' folder: python_docs with K = 50 (vocab_size 51), context 16


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('lm') / 'tiny')
  w = make_folder(path, tokenizer=False, sizes=SIZES, seed=3)
  return g2.load_gpt2(path), w


def log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def window_logits_ref(w, seq):
  """The literal forward pass on the last S tokens (positions 0..), last row."""
  return np_forward(w, np.array(seq[-S:]))[-1]


# ------------------------------------------------------------------------------ decoding

def test_greedy_sliding_window_equals_stepwise_argmax_of_the_window(tiny):
  model, w = tiny
  prompts = np.random.default_rng(0).integers(0, VOCAB, (3, 5))
  steps = 12  # 5 + 12 > S: the window slides, positions restart
  ids, logp = g2.decode(model, prompts, steps)
  assert ids.shape == logp.shape == (3, steps) and ids.dtype == np.int32
  for i, prompt in enumerate(prompts):
    seq = list(prompt)
    for t in range(steps):
      ref = window_logits_ref(w, seq)
      top2 = np.sort(ref)[-2:]
      assert top2[1] - top2[0] > 1e-3  # no near-tie: the float32 argmax is well defined
      assert ids[i, t] == int(np.argmax(ref)), (i, t)
      np.testing.assert_allclose(logp[i, t], log_softmax(ref)[ids[i, t]], atol=1e-4)
      seq.append(int(ids[i, t]))
  # The window's logits equal gpt2.forward on the window too (the suite's own forward pass).
  seq = list(prompts[0]) + list(ids[0])
  got = g2.next_token_log_probs(model, np.array([seq[:-1]]))[0]
  want = np.asarray(jax.nn.log_softmax(g2.forward(model.params, model.config,
                                                  np.array(seq[-S - 1:-1]))[-1]))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_next_token_log_probs_short_and_long_contexts(tiny):
  model, w = tiny
  rng = np.random.default_rng(1)
  for C in (3, S + 7):  # shorter than the context (used whole) and longer (its last S tokens)
    X = rng.integers(0, VOCAB, (4, C))
    got = g2.next_token_log_probs(model, X)
    for x, g in zip(X, got):
      np.testing.assert_allclose(g, log_softmax(window_logits_ref(w, list(x))), atol=1e-4)
  with pytest.raises(g2.GPT2Error, match='^contexts: token ids must be in'):
    g2.next_token_log_probs(model, np.array([[1, VOCAB]]))


def test_sampling_at_low_temperature_is_greedy_and_one_program_serves_all(tiny):
  model, _ = tiny
  prompts = np.random.default_rng(2).integers(0, VOCAB, (6, 4))
  key = jax.random.PRNGKey(5)
  greedy, _ = g2.decode(model, prompts, 10)
  cold, _ = g2.decode(model, prompts, 10, key=key, temperature=1e-4)
  np.testing.assert_array_equal(cold, greedy)
  hot, _ = g2.decode(model, prompts, 10, key=key, temperature=1.0)
  warm, _ = g2.decode(model, prompts, 10, key=key, temperature=0.7)
  assert (hot != greedy).any() and (warm != hot).any()
  # Greedy, three temperatures and two keys: one trace of the (P, T) program.
  g2.decode(model, prompts, 10, key=jax.random.PRNGKey(6), temperature=1.0)
  assert g2._window_decoder(model.config, 4, 10)._cache_size() == 1
  # A row does not depend on the other prompts (keys fold in the prompt index).
  others = np.r_[prompts[:2], (prompts[2:] + 1) % VOCAB]
  mixed, _ = g2.decode(model, others, 10, key=key, temperature=1.0)
  np.testing.assert_array_equal(mixed[:2], hot[:2])
  with pytest.raises(g2.GPT2Error, match='^temperature=1 needs a PRNG key'):
    g2.decode(model, prompts, 3, temperature=1.0)
  with pytest.raises(g2.GPT2Error, match='^temperature=-1 is invalid'):
    g2.decode(model, prompts, 3, key=key, temperature=-1)
  with pytest.raises(g2.GPT2Error, match=r'^steps=0 is invalid'):
    g2.decode(model, prompts, 0)


@pytest.mark.parametrize('temperature', [1.0, 0.7])
def test_sampled_first_token_frequencies_follow_the_tempered_softmax(tiny, temperature):
  model, w = tiny
  N = 4000
  prompt = np.array([3, 17, 5, 9, 30])
  ids, _ = g2.decode(model, np.tile(prompt, (N, 1)), 1, key=jax.random.PRNGKey(11),
                     temperature=temperature)
  p = np.exp(log_softmax(window_logits_ref(w, list(prompt)) / temperature))
  freq = np.bincount(ids[:, 0], minlength=VOCAB) / N
  se = np.sqrt(p * (1 - p) / N)
  assert np.all(np.abs(freq - p) <= 5 * se + 1e-3), np.max(np.abs(freq - p) / (se + 1e-9))


# ------------------------------------------------------------------------- likelihoods

def np_copy_law(lp_X, X):
  """{token: renormalised LM probability} over the distinct prompt tokens (numpy loop)."""
  tokens = list(dict.fromkeys(X.tolist()))
  z = sum(math.exp(lp_X[X.tolist().index(t)]) for t in tokens)
  return {t: math.exp(lp_X[X.tolist().index(t)]) / z for t in tokens}


def np_ccmc_law(log_P, X):
  """pi^X_j = m_j(X) P[x_L, j] / sum (paper Lemma 2.2), by counting."""
  P = np.exp(log_P[X[-1]])
  tokens = list(dict.fromkeys(X.tolist()))
  weights = {t: X.tolist().count(t) * P[t] for t in tokens}
  z = sum(weights.values())
  return {t: v / z for t, v in weights.items()}


def test_copy_kl_and_renormalised_nll_against_numpy_loops():
  rng = np.random.default_rng(4)
  V, L, N = 7, 6, 20
  X = rng.integers(0, V, (N, L))
  lp = np.log(rng.dirichlet(np.ones(V), N)).astype(np.float32)
  lp_X = np.take_along_axis(lp, X, 1)
  log_P = np.log(rng.dirichlet(np.ones(V), V)).astype(np.float32)
  y = np.array([rng.choice(x) for x in X])
  kl = np.asarray(lm.copy_kl(lp_X, log_P, X))
  lq, mass = (np.asarray(a) for a in lm.renormalised_log_likelihood(lp_X, X, y))
  for i in range(N):
    q, pi = np_copy_law(lp_X[i], X[i]), np_ccmc_law(log_P, X[i])
    want = sum(q[t] * math.log(q[t] / pi[t]) for t in q)
    np.testing.assert_allclose(kl[i], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lq[i], math.log(q[y[i]]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mass[i], sum(math.exp(lp[i, t]) for t in q), rtol=1e-5)
  # ccmc_log_law is text.ccmc_log_likelihood's law; a CCMC equal to q has KL 0.
  np.testing.assert_allclose(np.asarray(lm.ccmc_log_law(log_P, X[0]))[X[0].tolist().index(y[0])],
                             np.asarray(text.ccmc_log_likelihood(log_P, X[:1], y[:1]))[0],
                             atol=1e-6)
  assert np.all(kl >= -1e-6)


def test_chunks_cover_the_bigram_pairs_and_nll_equals_a_loop(tiny):
  model, w = tiny
  ids = np.random.default_rng(5).integers(0, VOCAB, 60).astype(np.int32)
  blocks = [(0, 20), (25, 26), (30, 60)]
  X, mask = lm.chunks(ids, blocks, S)
  pairs = sorted((int(c[j]), int(c[j + 1]), k) for k, (c, m) in enumerate(zip(X, mask))
                 for j in range(S - 1) if m[j])
  assert len(pairs) == sum(e - s - 1 for s, e in blocks)  # every target once, none across blocks
  want = []
  for c, m in zip(X, mask):
    lp = np.array([log_softmax(r) for r in np_forward(w, c)])
    want += [lp[j, c[j + 1]] for j in range(S - 1) if m[j]]
  np.testing.assert_allclose(lm.lm_nll_per_token(model, ids, blocks), -np.mean(want), rtol=1e-5)


def test_query_answer_of_a_prompt_does_not_depend_on_the_others(tiny):
  model, _ = tiny
  X = np.random.default_rng(6).integers(0, VOCAB, (4, S + 7))  # the shape compiled above
  key = jax.random.PRNGKey(2)
  y, lp_X = dist.query(model, key, X)
  y2, _ = dist.query(model, key, np.r_[X[:2], (X[2:] + 1) % VOCAB])
  np.testing.assert_array_equal(y[:2], y2[:2])  # so the training sets of n are nested
  np.testing.assert_allclose(lp_X, np.take_along_axis(g2.next_token_log_probs(model, X), X, 1))


# ------------------------------------------------------------------- folder vs vocabulary

def test_model_folder_must_carry_the_suites_vocabulary(tmp_path):
  vocab = [f'w{i}' for i in range(VOCAB - 1)] + [text.UNK]
  path = str(tmp_path / 'f')
  make_folder(path, tokenizer=False, sizes=SIZES)
  assert lm.check_model_folder(path, vocab).vocab_size == VOCAB
  with pytest.raises(g2.GPT2Error, match=r'^model_dir=.*vocab_size=40, but .* K \+ 1 = 39'):
    lm.check_model_folder(path, vocab[1:])
  with open(os.path.join(path, 'vocab.json'), 'w') as f:
    json.dump({w: i for i, w in enumerate(vocab)}, f)
  assert lm.check_model_folder(path, vocab).vocab_size == VOCAB
  swapped = vocab[:]
  swapped[0], swapped[1] = swapped[1], swapped[0]
  with pytest.raises(g2.GPT2Error, match="not the suite's vocabulary .*'w1' is 1 there, 0 here"):
    lm.check_model_folder(path, swapped)


# ------------------------------------------------------------------------------ scripts

@pytest.fixture(scope='module')
def quick_folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('lmq') / 'train_lm')
  make_folder(path, tokenizer=False, sizes=dict(n_layer=2, n_head=2, n_embd=16,
                                                 vocab_size=K_QUICK + 1, n_positions=16))
  return path


def test_lm_repetition_quick_compiles_the_decoder_once(tmp_path, quick_folder):
  from test_compilation import compilations  # pylint: disable=import-outside-toplevel
  r = run_module('experiments.lm_repetition', '--quick', f'--hf_model_dir={quick_folder}',
                 tmp=tmp_path, env={'JAX_LOG_COMPILES': '1', 'CCMC_JAX_CACHE': ''})
  assert r.returncode == 0, r.stderr[-3000:]
  assert compilations(r.stderr).get('sliding_window_decode') == 1  # 3 LM sources, 1 program
  res = tmp_path / 'results'
  rows = pd.read_csv(res / 'lm_repetition.csv')
  assert set(rows['source']) == set(lm.SOURCES) and len(rows) == len(lm.SOURCES) * 10
  assert rows['seq_rep_4'].between(0, 1).all() and (rows['K'] == K_QUICK).all()
  curves = pd.read_csv(res / 'lm_repetition_curves.csv')
  assert len(curves) == len(lm.SOURCES) * 40
  nll = pd.read_csv(res / 'lm_repetition_nll.csv')
  assert set(zip(nll['events'], nll['model'])) == {
      ('all_tokens', 'lm'), ('all_tokens', 'bigram_chain'), ('copy_events', 'lm'),
      ('copy_events', 'lm_renormalised'), ('copy_events', 'mle'), ('copy_events', 'bigram_P'),
      ('copy_events', 'uniform_P')}
  assert np.isfinite(nll['nll']).all() and (nll['nll'] > 0).all()
  for name, frame in (('lm_repetition', rows), ('lm_repetition_curves', curves),
                      ('lm_repetition_nll', nll)):
    keys = json.loads((res / f'{name}.meta.json').read_text())['keys']
    assert set(frame.columns) - set(keys) <= set(tolerances.TABLES[name]), name
  meta = json.loads((res / 'lm_repetition.meta.json').read_text())
  assert meta['status'] == 'complete' and meta['tolerances']['seq_rep_4']['informational']
  assert (tmp_path / 'figures' / 'lm_repetition.png').stat().st_size > 0
  # The same prompts as real_text (its T = 1000 choice) for the same corpus, K, L and seed.
  from ccmc_jax.trials import real_text  # pylint: disable=import-outside-toplevel
  prep = real_text.prepare(text.read_python_docs(), K_QUICK, 32, lm.PROMPT_T, 10, 0)
  assert list(rows[rows['source'] == 'corpus']['position']) == list(prep.positions)


def test_lm_distillation_quick(tmp_path, quick_folder):
  r = run_module('experiments.lm_distillation', '--quick', f'--hf_model_dir={quick_folder}',
                 tmp=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = pd.read_csv(tmp_path / 'results' / 'lm_distillation.csv')
  assert list(zip(rows['source'], rows['n'])) == [(s, n) for s in sorted(dist.SOURCES)
                                                  for n in (100, 300)]
  assert (rows['n_copy'] <= rows['n']).all() and np.isfinite(rows['kl_lm_copy']).all()
  assert (rows['floor_nll'] <= rows['heldout_nll_lm']).all()  # the LM's own law is the floor
  assert set(rows.columns) - {'source', 'n'} <= set(tolerances.TABLES['lm_distillation'])
  assert (tmp_path / 'figures' / 'lm_distillation.png').stat().st_size > 0


@pytest.mark.parametrize('script, args, needle', [
    ('lm_repetition', [], '--hf_model_dir={tmp}/results/train_lm: no such folder'),
    ('lm_repetition', ['--hf_model_dir={q}', '--corpus=python_docs', '--K=60'],
     '--hf_model_dir={q}: config.json has vocab_size=51, but the corpus and K give K + 1 = 61'),
    ('lm_distillation', ['--hf_model_dir={q}', '--quick', '--T=50'],
     '--T is a flag of experiments.lm_repetition, not of lm_distillation'),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, quick_folder, script, args, needle):
  args = [a.format(q=quick_folder, tmp=tmp_path) for a in args]
  r = run_module(f'experiments.{script}', *args, tmp=tmp_path)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip() == 'error: ' + needle.format(q=quick_folder, tmp=tmp_path) or (
      r.stderr.startswith('error: ' + needle.format(q=quick_folder, tmp=tmp_path))), r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  assert not [f for f in os.listdir(tmp_path / 'results') if not f.startswith('.')] if (
      tmp_path / 'results').exists() else True
