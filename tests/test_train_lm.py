"""Training a GPT-2-architecture LM (ccmc_jax.lm, ccmc_jax.trials.train_lm, experiments.train_lm):
the init has gpt2's layout, the loss is gpt2's forward pass, the schedule and AdamW step equal
hand-written references, a checkpoint folder round-trips through gpt2.load_gpt2 (same params,
same logits), a resumed run ends with the bytes of an uninterrupted one, and every bad input is
one line and exit status 2 with nothing overwritten."""
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import gpt2
from ccmc_jax import lm
from ccmc_jax import text
from ccmc_jax.trials import real_text
from ccmc_jax.trials import train_lm
from conftest import ROOT

CONFIG = gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=41, n_positions=12)


def corpus(n_words=12000, seed=0):
  """A synthetic text: a sparse random Markov chain over 60 words plus punctuation."""
  rng = np.random.default_rng(seed)
  words = [f'w{i}' for i in range(60)] + [',', '.']
  P = rng.dirichlet(np.full(len(words), 0.1), size=len(words))
  x, out = 0, []
  for _ in range(n_words):
    x = rng.choice(len(words), p=P[x])
    out.append(words[x])
  return ' '.join(out)


@pytest.fixture(scope='module')
def data():
  return train_lm.prepare(corpus(), 40, seed=3, context=CONFIG.n_positions)


def numpy_params(params):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)


# ------------------------------------------------------------------------- model and loss

def test_init_has_gpt2s_layout_and_gpt2s_scales():
  params = lm.init_params(jax.random.PRNGKey(0), CONFIG)
  shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), params)
  assert shapes == gpt2.param_shapes(CONFIG)
  assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == gpt2.param_count(CONFIG)
  big = lm.init_params(jax.random.PRNGKey(1), CONFIG._replace(n_embd=64, vocab_size=500))
  np.testing.assert_allclose(np.std(big['wte']), 0.02, rtol=0.03)  # 32,000 draws: se 0.4 %
  np.testing.assert_allclose(np.std(big['blocks'][1]['mlp_proj_w']), 0.02 / 2, rtol=0.03)
  np.testing.assert_allclose(np.std(big['blocks'][0]['attn_w']), 0.02, rtol=0.03)
  assert not np.any(big['blocks'][0]['fc_b']) and np.all(big['ln_f_g'] == 1)
  with pytest.raises(ValueError, match='config'):
    lm.init_params(jax.random.PRNGKey(0), {'n_layer': 2})


def test_loss_is_the_mean_nll_of_gpt2_forward():
  params = lm.init_params(jax.random.PRNGKey(2), CONFIG)
  params = jax.tree_util.tree_map(lambda a: a * 20 if a.ndim == 2 else a, params)  # peaky
  tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (3, CONFIG.n_positions + 1))
  nll = np.zeros((3, CONFIG.n_positions))
  for b in range(3):  # one sequence at a time, log-softmax by hand in float64
    z = np.asarray(gpt2.forward(params, CONFIG, jnp.asarray(tokens[b, :-1])), np.float64)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    nll[b] = -logp[np.arange(CONFIG.n_positions), tokens[b, 1:]]
  got = lm.token_nll(params, CONFIG, jnp.asarray(tokens, jnp.int32))
  np.testing.assert_allclose(got, nll, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(lm.loss(params, CONFIG, jnp.asarray(tokens, jnp.int32)),
                             nll.mean(), rtol=2e-5)


def nanogpt_lr(it, lr, warmup, decay_iters, min_lr):
  """nanoGPT's get_lr, literally."""
  if it < warmup:
    return lr * (it + 1) / (warmup + 1)
  if it > decay_iters:
    return min_lr
  ratio = (it - warmup) / (decay_iters - warmup)
  return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_schedule_is_nanogpts():
  f = lm.lr_schedule(3e-3, 50, 7, 3e-4)
  for it in range(0, 56):
    assert float(f(it)) == pytest.approx(nanogpt_lr(it, 3e-3, 7, 50, 3e-4), rel=1e-6), it


def test_adamw_step_equals_a_hand_written_reference():
  """Clip to global norm 1, AdamW (0.9, 0.95, eps 1e-8), decay on matrices only, nanoGPT
  schedule: three steps in float64 by hand."""
  rng = np.random.default_rng(0)
  params = {'w': rng.standard_normal((3, 4)), 'b': rng.standard_normal(4)}
  grads = [{'w': 3 * rng.standard_normal((3, 4)), 'b': 0.1 * rng.standard_normal(4)}
           for _ in range(3)]
  lr, wd, steps, warmup = 0.1, 0.1, 3, 1
  opt = lm.optimizer(lr, steps, warmup, weight_decay=wd)
  p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
  state = opt.init(p)
  ref = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(v) for k, v in params.items()}
  for t, g in enumerate(grads):
    updates, state = opt.update(jax.tree_util.tree_map(jnp.float32, g), state, p)
    p = jax.tree_util.tree_map(lambda a, u: a + u, p, updates)
    norm = math.sqrt(sum((x ** 2).sum() for x in g.values()))
    scale = min(1.0, 1.0 / norm)
    rate = nanogpt_lr(t, lr, warmup, steps, lr / 10)
    for k in ref:
      gk = g[k] * scale
      m[k] = 0.9 * m[k] + 0.1 * gk
      v[k] = 0.95 * v[k] + 0.05 * gk ** 2
      mhat, vhat = m[k] / (1 - 0.9 ** (t + 1)), v[k] / (1 - 0.95 ** (t + 1))
      step = mhat / (np.sqrt(vhat) + 1e-8) + (wd * ref[k] if ref[k].ndim >= 2 else 0)
      ref[k] = ref[k] - rate * step
    for k in ref:
      np.testing.assert_allclose(p[k], ref[k], rtol=1e-5, atol=1e-6)


def test_eval_chunks_score_every_bigram_target_once(data):
  blocks = data.split.blocks(1)
  tokens, w = lm.eval_chunks(data.ids, blocks, 5)
  assert w.sum() == sum(e - s - 1 for s, e in blocks)
  # the targets, in order, are the bigram chain's: every token of a block but its first
  targets = tokens[:, 1:][w > 0]
  np.testing.assert_array_equal(targets, np.concatenate([data.ids[s + 1:e] for s, e in blocks]))
  params = lm.init_params(jax.random.PRNGKey(0), CONFIG)
  tokens, w = tokens[-9:], w[-9:]  # a block's end: the last chunk is padded
  assert 0 < w[-1].sum() < 5 or 0 < w[-2].sum() < 5
  nll = np.asarray(lm.token_nll(params, CONFIG, jnp.asarray(tokens)))
  brute = np.concatenate([nll[i][:int(w[i].sum())] for i in range(len(w))])
  assert lm.mean_nll(params, CONFIG, tokens, w, batch=4) == pytest.approx(brute.mean(), 1e-5)


def test_split_and_vocabulary_are_real_texts(data):
  """The contract with the repetition experiments: same tokens, split and vocabulary."""
  prep = real_text.prepare(corpus(), 40, 8, 10, 3, seed=3)
  assert data.vocab == prep.vocab and len(data.vocab) == 41 and data.vocab[-1] == text.UNK
  np.testing.assert_array_equal(data.ids, prep.ids)
  np.testing.assert_array_equal(data.split.role, prep.split.role)
  np.testing.assert_array_equal(data.split.bounds, prep.split.bounds)


def test_baselines_are_the_bigram_helpers(data):
  base = train_lm.baselines(data)
  C = text.bigram_counts(data.ids, data.split.blocks(0), 41)
  best = min(text.bigram_nll(text.bigram_log_matrix(C, a), data.ids, data.split.blocks(1))
             for a in train_lm.SMOOTHING)
  assert base['bigram_validation_nll'] == best
  assert base['bigram_validation_nll'] < base['unigram_validation_nll'] < math.log(41)


# ------------------------------------------------------------------------- checkpoints

HP = train_lm.Hyper(steps=4, batch=4, lr=3e-3, warmup=1, eval_interval=2)
TIMING = ['tokens_per_s', 'elapsed_s']


def train_into(folder, data, stop_at=None, resume=None):
  """train_lm.train checkpointing into ``folder`` at every evaluation; KeyboardInterrupt right
  after the checkpoint of step ``stop_at``. Returns (history, the in-memory params at the end)."""
  last = {}

  def on_eval(row, history, config, params, opt_state):
    files = lm.folder_files(config, params, data.vocab, opt_state,
                            {'step': row['step'], 'history': history, 'status': 'partial'})
    lm.save_folder(folder, files)
    last['params'] = params
    if row['step'] == stop_at:
      raise KeyboardInterrupt

  history = train_lm.train(data, CONFIG, HP, 5, train_lm.baselines(data), resume, on_eval)
  return history, last['params']


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data):
  """(folder, history, in-memory params) of one uninterrupted tiny training."""
  folder = str(tmp_path_factory.mktemp('trained'))
  history, params = train_into(folder, data)
  return folder, history, params


def copy_of(folder, dest):
  shutil.copytree(folder, dest)
  return str(dest)


def test_folder_round_trips_through_load_gpt2(trained, data):
  folder, history, params = trained
  tmp_path = folder
  assert [r['step'] for r in history] == [0, 2, 4]
  assert history[-1]['validation_nll'] < history[0]['validation_nll']
  assert sorted(os.listdir(tmp_path)) == sorted(lm.MODEL_FILES + (lm.OPTIMIZER_FILE,
                                                                  lm.STATE_FILE))
  model = gpt2.load_gpt2(str(tmp_path))
  assert model.config == CONFIG and 'lm_head' not in model.params
  for a, b in zip(jax.tree_util.tree_leaves(model.params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  ids = jnp.asarray(data.ids[:2 * CONFIG.n_positions].reshape(2, -1))
  np.testing.assert_array_equal(lm.logits(model.params, CONFIG, ids),
                                lm.logits(params, CONFIG, ids))
  # the word tokenizer is the suite's: token id k = vocab[k], unknown words -> <unk>
  tok = model.tokenizer
  assert isinstance(tok, gpt2.WordTokenizer) and tok.vocab == data.vocab
  sample = 'W3 w7, w59 zebra.'
  assert tok.encode(sample) == text.encode(text.tokenize(sample), data.vocab).tolist()
  assert tok.encode('zebra') == [40] and model.token_text(40) == text.UNK
  assert gpt2.prompt_token_ids(model, prompt='w1 w2') == tok.encode('w1 w2')
  some = data.ids[:200][data.ids[:200] != 40][:30]  # known words (<unk> reads as '<', ...)
  assert tok.decode(some) == text.detokenize(some, data.vocab)
  assert tok.encode(tok.decode(some)) == some.tolist()


def test_resume_gives_the_bytes_of_an_uninterrupted_run(tmp_path, trained, data):
  full, history, _ = trained
  cut = str(tmp_path / 'cut')
  with pytest.raises(KeyboardInterrupt):
    train_into(cut, data, stop_at=2)
  assert json.load(open(os.path.join(cut, lm.STATE_FILE)))['step'] == 2
  ckpt = train_lm.load_for_resume(cut, CONFIG, HP)
  resumed, _ = train_into(cut, data, resume=ckpt)
  for name in ('model.safetensors', lm.OPTIMIZER_FILE, 'config.json', 'vocab.json'):
    with open(os.path.join(full, name), 'rb') as a, open(os.path.join(cut, name), 'rb') as b:
      assert a.read() == b.read(), name
  drop = lambda h: pd.DataFrame(h).drop(columns=TIMING)
  pd.testing.assert_frame_equal(drop(resumed), drop(history), check_like=True)


def test_safetensors_writer_is_the_readers_inverse(tmp_path):
  tensors = {'b': np.arange(3, dtype=np.float32), 'a': np.ones((2, 0), np.float32),
             'c': np.float32([[1.5, -2], [3, 4e-7]])}
  data = gpt2.safetensors_bytes(tensors, {'format': 'pt'})
  n = int.from_bytes(data[:8], 'little')
  assert n % 8 == 0 and data[8 + n:] == tensors['b'].tobytes() + tensors['c'].tobytes()
  header = json.loads(data[8:8 + n])
  assert header['c'] == {'dtype': 'F32', 'shape': [2, 2], 'data_offsets': [12, 28]}
  path = tmp_path / 'x.safetensors'
  path.write_bytes(data)
  back = gpt2.read_safetensors(str(path))
  assert set(back) == set(tensors)
  for k, a in tensors.items():
    np.testing.assert_array_equal(back[k], a)
  assert gpt2.safetensors_bytes(tensors, {'format': 'pt'}) == data  # deterministic
  with pytest.raises(ValueError, match='float32'):
    gpt2.safetensors_bytes({'x': np.zeros(2)})


def test_broken_checkpoints_are_one_line_errors(tmp_path, trained):
  folder = copy_of(trained[0], tmp_path / 'broken')
  weights = os.path.join(folder, 'model.safetensors')
  good = open(weights, 'rb').read()
  with open(weights, 'wb') as f:
    f.write(good[:-64])
  for fn in (lambda: train_lm.load_for_resume(folder, CONFIG, HP),
             lambda: lm.check_digests(folder, lm.read_state(folder))):
    with pytest.raises(lm.CheckpointError, match=r'model.safetensors is not the file') as e:
      fn()
    assert '\n' not in str(e.value)
  with pytest.raises(gpt2.GPT2Error, match='truncated'):
    gpt2.load_gpt2(folder)
  with open(weights, 'wb') as f:
    f.write(good)
  with pytest.raises(lm.CheckpointError, match='does not describe the model'):
    train_lm.load_for_resume(folder, CONFIG._replace(n_positions=11), HP)
  with open(os.path.join(folder, lm.STATE_FILE), 'w') as f:
    f.write('{"step": 2, "hist')
  with pytest.raises(lm.CheckpointError, match='training.json is not readable JSON'):
    lm.read_state(folder)


# ------------------------------------------------------------------------- the command line

def snapshot(folder):
  return {p: open(os.path.join(folder, p), 'rb').read() for p in sorted(os.listdir(folder))}


def one_line_error(r, start):
  assert r.returncode == 2, r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(f'error: {start}'), \
      r.stderr


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
  """``python -m experiments.train_lm --quick`` once (seconds)."""
  from conftest import run_module
  tmp = tmp_path_factory.mktemp('quick')
  r = run_module('experiments.train_lm', '--quick', tmp=tmp)
  assert r.returncode == 0, r.stderr
  return tmp, r


def test_quick_run_writes_the_folder_csv_and_figure(quick):
  tmp, r = quick
  assert 'tokens/s' in r.stderr and 'min left' in r.stderr
  df = pd.read_csv(tmp / 'results' / 'train_lm.csv')
  assert list(df.columns) == list(train_lm.COLUMNS) and list(df['step']) == [0, 10, 20, 30]
  assert df['validation_nll'].iloc[-1] < df['validation_nll'].iloc[0]
  assert (df['bigram_nll'] < df['unigram_nll']).all() and (df['tokens_per_s'][1:] > 0).all()
  meta = json.load(open(tmp / 'results' / 'train_lm.meta.json'))
  assert meta['status'] == 'complete' and meta['flags']['K'] == 200
  model = gpt2.load_gpt2(str(tmp / 'results' / 'train_lm'))
  assert model.config.vocab_size == 201 and len(model.tokenizer.vocab) == 201
  state = lm.read_state(str(tmp / 'results' / 'train_lm'))
  assert state['status'] == 'complete' and len(state['repetition_prompt_ids']) == 8
  for ext in ('png', 'pdf'):
    assert (tmp / 'figures' / f'train_lm.{ext}').stat().st_size > 0


def test_bad_flags_and_checkpoints_are_one_line_errors(quick, tmp_path):
  from conftest import run_module
  tmp, _ = quick
  folder = str(tmp / 'results' / 'train_lm')
  before = snapshot(folder)
  csv = open(tmp / 'results' / 'train_lm.csv', 'rb').read()
  r = run_module('experiments.train_lm', '--quick', '--resume', '--lr=0.01', tmp=tmp)
  one_line_error(r, f'--resume: {folder} was made with other flags (lr)')
  one_line_error(run_module('experiments.train_lm', '--steps=0', tmp=tmp), '--steps=0 is invalid')
  assert snapshot(folder) == before and open(tmp / 'results' / 'train_lm.csv', 'rb').read() == csv
  # a truncated checkpoint; a config that disagrees with the weights
  bad = copy_of(folder, tmp_path / 'bad')
  data = open(os.path.join(bad, 'model.safetensors'), 'rb').read()
  open(os.path.join(bad, 'model.safetensors'), 'wb').write(data[:len(data) // 2])
  r = run_module('experiments.train_lm', '--quick', '--resume', f'--model_dir={bad}',
                 tmp=tmp_path)
  one_line_error(r, f'--resume: {bad}/model.safetensors is not the file training.json recorded')
  r = run_module('experiments.gpt2_repetition', f'--hf_model_dir={bad}', '--prompt_ids=1',
                 '--steps=3', tmp=tmp_path)
  one_line_error(r, f'--hf_model_dir={bad}: model.safetensors: ')
  assert 'truncated' in r.stderr
  open(os.path.join(bad, 'model.safetensors'), 'wb').write(data)
  cfg = json.load(open(os.path.join(bad, 'config.json')))
  json.dump(dict(cfg, n_embd=64), open(os.path.join(bad, 'config.json'), 'w'))
  r = run_module('experiments.gpt2_repetition', f'--hf_model_dir={bad}', '--prompt_ids=1',
                 '--steps=3', tmp=tmp_path)
  one_line_error(r, f'--hf_model_dir={bad}: model.safetensors: ')
  assert 'config.json implies' in r.stderr
  assert not os.path.exists(tmp_path / 'results' / 'gpt2_repetition.csv')


def test_reuse_keeps_the_folder_and_rewrites_the_same_csv(quick):
  from conftest import run_module
  tmp, _ = quick
  folder = str(tmp / 'results' / 'train_lm')
  before, csv = snapshot(folder), open(tmp / 'results' / 'train_lm.csv', 'rb').read()
  r = run_module('experiments.train_lm', '--quick', '--reuse', tmp=tmp)
  assert r.returncode == 0 and 'reused' in r.stderr, r.stderr
  assert snapshot(folder) == before and open(tmp / 'results' / 'train_lm.csv', 'rb').read() == csv
  # the trained folder drives the repetition panel (word ids, prompt from held-out text)
  state = lm.read_state(folder)
  ids = ','.join(map(str, state['repetition_prompt_ids']))
  r = run_module('experiments.gpt2_repetition', f'--hf_model_dir={folder}', f'--prompt_ids={ids}',
                 f'--steps={state["repetition_steps"]}', tmp=tmp / 'rep')
  assert r.returncode == 0, r.stderr
  df = pd.read_csv(tmp / 'rep' / 'results' / 'gpt2_repetition.csv')
  assert (df['part'] == 'generated').sum() == state['repetition_steps'] == 24
