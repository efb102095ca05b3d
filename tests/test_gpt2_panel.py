"""The GPT-2 panel (paper Fig. 5 left) on a TINY random GPT-2 folder written here: our own
safetensors writer against the reader, the JAX forward pass and greedy decoding against a literal
float64 numpy forward pass (loops over heads and positions, explicit causal softmax), the BPE
tokenizer against hand-worked merges, the repetition table against brute force, and one-line
errors for broken folders."""
import ast
import glob
import json
import math
import os

import jax
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import io
from ccmc_jax import gpt2 as g2
from experiments.plots import gpt2_repetition as plots

N_LAYER, N_HEAD, N_EMBD, N_POS = 2, 2, 16, 64
# Merges in rank order; each adds the concatenated token to the vocabulary.
MERGES = [('Ġ', 't'), ('h', 'e'), ('Ġt', 'he'), ('Ġ', 'c'), ('a', 't'), ('Ġc', 'at'), ('i', 'n'),
          ('Ġ', 'a'), ('e', 'r'), ('o', 'r'), ('Ġ', 'w'), ('Ġw', 'or'), ('l', 'd'), ('Ġwor', 'ld'),
          ('1', '2'), ('12', '3'), ('.', '.'), ('..', '.'), ('Ċ', 'Ċ'), ('Ġ', 's'), ('o', 'n'),
          ('Ġ', 'o'), ('Ġo', 'n'), ('Ġs', 'at'), ('Ã', '©'), ('c', 'af'), ('a', 'f'), ('c', 'af'),
          ('caf', 'Ã©'), ('H', 'e'), ('He', 'l'), ('Hel', 'l'), ('Hell', 'o'), ('Ġ', 'Ġ')]
MERGES = list(dict.fromkeys(MERGES))  # ('c', 'af') listed twice above: keep the first


def tiny_vocab():
  byte_chars = list(g2.bytes_to_unicode().values())
  tokens = byte_chars + [a + b for a, b in MERGES] + ['<|endoftext|>']
  tokens = list(dict.fromkeys(tokens))
  return {t: i for i, t in enumerate(tokens)}


VOCAB = tiny_vocab()
V = len(VOCAB) + 12  # a few unused rows, as real checkpoints pad the embedding


def write_safetensors(path, tensors, header_pad=True):
  """An independent minimal writer: {name: (array, dtype)}; dtype F32, F16 or BF16."""
  header, chunks, offset = {'__metadata__': {'format': 'pt'}}, [], 0
  for name, (a, dtype) in tensors.items():
    a = np.asarray(a)  # tobytes() writes C order (np.ascontiguousarray would make 0-d 1-d)
    if dtype == 'F32':
      raw = a.astype('<f4').tobytes()
    elif dtype == 'F16':
      raw = a.astype('<f2').tobytes()
    elif dtype == 'BF16':  # truncate float32 to its top 16 bits
      raw = (a.astype('<f4').view('<u4') >> 16).astype('<u2').tobytes()
    else:
      raise ValueError(dtype)
    header[name] = {'dtype': dtype, 'shape': list(a.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  if header_pad:
    text += b' ' * (-len(text) % 8)
  with open(path, 'wb') as f:
    f.write(len(text).to_bytes(8, 'little') + text + b''.join(chunks))


def as_stored(a, dtype):
  """The float64 values a reader must return for ``a`` stored as ``dtype``."""
  if dtype == 'F16':
    return a.astype(np.float16).astype(np.float64)
  if dtype == 'BF16':
    return (a.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
  return a.astype(np.float32).astype(np.float64)


def random_hf_weights(seed=0, n_layer=N_LAYER, vocab=V, lm_head=False, n_embd=N_EMBD,
                      n_positions=N_POS):
  rng = np.random.default_rng(seed)
  D = n_embd
  w = {'wte.weight': rng.normal(0, 0.5, (vocab, D)),
       'wpe.weight': rng.normal(0, 0.3, (n_positions, D)),
       'ln_f.weight': 1 + 0.1 * rng.normal(size=D), 'ln_f.bias': 0.1 * rng.normal(size=D)}
  for i in range(n_layer):
    for name, shape in (('ln_1.weight', (D,)), ('ln_1.bias', (D,)),
                        ('attn.c_attn.weight', (D, 3 * D)), ('attn.c_attn.bias', (3 * D,)),
                        ('attn.c_proj.weight', (D, D)), ('attn.c_proj.bias', (D,)),
                        ('ln_2.weight', (D,)), ('ln_2.bias', (D,)),
                        ('mlp.c_fc.weight', (D, 4 * D)), ('mlp.c_fc.bias', (4 * D,)),
                        ('mlp.c_proj.weight', (4 * D, D)), ('mlp.c_proj.bias', (D,))):
      base = 1.0 if name.startswith('ln') and name.endswith('weight') else 0.0
      w[f'h.{i}.{name}'] = base + rng.normal(0, 0.4 if name.endswith('weight') else 0.1, shape)
  w['h.0.attn.bias'] = np.tril(np.ones((1, 1, n_positions, n_positions)))  # HF's mask: ignored
  if lm_head:
    w['lm_head.weight'] = rng.normal(0, 0.5, (vocab, D))
  return w


def make_folder(path, dtype='F32', prefix='', tokenizer=True, seed=0, lm_head=False, config=None,
                sizes=None):
  """A tiny Hugging Face GPT-2 folder; returns the float64 weights as the reader must see them.

  ``sizes`` (n_layer, n_head, n_embd, vocab_size, n_positions) sets the config and the weights
  alike; ``config`` overrides config.json alone (a folder whose config disagrees with its
  weights)."""
  os.makedirs(path, exist_ok=True)
  shape = {'n_layer': N_LAYER, 'n_head': N_HEAD, 'n_embd': N_EMBD, 'vocab_size': V,
           'n_positions': N_POS, **(sizes or {})}
  cfg = {'model_type': 'gpt2', **shape, 'layer_norm_epsilon': 1e-5,
         'activation_function': 'gelu_new', 'n_inner': None}
  cfg.update(config or {})
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  w = random_hf_weights(seed, n_layer=shape['n_layer'], vocab=shape['vocab_size'],
                        lm_head=lm_head, n_embd=shape['n_embd'], n_positions=shape['n_positions'])
  write_safetensors(os.path.join(path, 'model.safetensors'),
                    {(k if k == 'lm_head.weight' else prefix + k): (a, dtype)
                     for k, a in w.items()})
  if tokenizer:
    with open(os.path.join(path, 'vocab.json'), 'w', encoding='utf-8') as f:
      json.dump(VOCAB, f, ensure_ascii=False)
    with open(os.path.join(path, 'merges.txt'), 'w', encoding='utf-8') as f:
      f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in MERGES))
  return {k: as_stored(a, dtype) for k, a in w.items()}


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('gpt2') / 'tiny')
  return path, make_folder(path)


# -------------------------------------------------------------------------- numpy reference

def np_layer_norm(x, g, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def np_gelu_new(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_forward(w, ids, n_layer=N_LAYER, n_head=N_HEAD):
  """Literal GPT-2 forward pass in float64: per head, per position, explicit causal softmax."""
  T, D = len(ids), w['wte.weight'].shape[1]
  hd = D // n_head
  x = w['wte.weight'][ids] + w['wpe.weight'][:T]
  for l in range(n_layer):
    p = lambda name: w[f'h.{l}.{name}']  # pylint: disable=cell-var-from-loop
    h = np_layer_norm(x, p('ln_1.weight'), p('ln_1.bias'))
    qkv = h @ p('attn.c_attn.weight') + p('attn.c_attn.bias')
    q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
    attn = np.zeros((T, D))
    for head in range(n_head):
      cols = slice(head * hd, (head + 1) * hd)
      for t in range(T):
        scores = np.array([q[t, cols] @ k[s, cols] / math.sqrt(hd) for s in range(t + 1)])
        e = np.exp(scores - scores.max())
        weights = e / e.sum()
        attn[t, cols] = sum(weights[s] * v[s, cols] for s in range(t + 1))
    x = x + attn @ p('attn.c_proj.weight') + p('attn.c_proj.bias')
    h = np_layer_norm(x, p('ln_2.weight'), p('ln_2.bias'))
    x = x + np_gelu_new(h @ p('mlp.c_fc.weight') + p('mlp.c_fc.bias')) @ p(
        'mlp.c_proj.weight') + p('mlp.c_proj.bias')
  x = np_layer_norm(x, w['ln_f.weight'], w['ln_f.bias'])
  return x @ w.get('lm_head.weight', w['wte.weight']).T


# ------------------------------------------------------------------------------- loader

@pytest.mark.parametrize('dtype', ['F32', 'F16', 'BF16'])
def test_safetensors_reader_round_trips_our_writer(tmp_path, dtype):
  rng = np.random.default_rng(1)
  arrays = {'a': rng.normal(size=(3, 5)), 'b.c': rng.normal(size=(7,)), 'z': np.zeros((2, 0, 3)),
            's': np.array(2.5)}
  path = str(tmp_path / 'x.safetensors')
  write_safetensors(path, {k: (a, dtype) for k, a in arrays.items()}, header_pad=False)
  got = g2.read_safetensors(path)
  assert set(got) == set(arrays)
  for k, a in arrays.items():
    assert got[k].shape == a.shape
    np.testing.assert_array_equal(got[k].astype(np.float64), as_stored(a, dtype))
  assert got['a'].dtype == {'F32': np.float32, 'F16': np.float16, 'BF16': np.float32}[dtype]
  assert list(g2.read_safetensors(path, ['b.c'])) == ['b.c']


@pytest.mark.parametrize('dtype,prefix', [('F32', ''), ('F16', 'transformer.'),
                                          ('BF16', 'transformer.')])
def test_load_gpt2_round_trips_weights_and_stacks_layers(tmp_path, dtype, prefix):
  w = make_folder(str(tmp_path), dtype=dtype, prefix=prefix)
  model = g2.load_gpt2(str(tmp_path))
  assert model.config == g2.GPT2Config(N_LAYER, N_HEAD, N_EMBD, V, N_POS, 1e-5, 0, 'gelu_new')
  np.testing.assert_array_equal(model.params['wte'], w['wte.weight'])
  np.testing.assert_array_equal(model.params['wpe'], w['wpe.weight'])
  np.testing.assert_array_equal(model.params['ln_f_b'], w['ln_f.bias'])
  assert 'lm_head' not in model.params  # tied
  blocks = model.params['blocks']
  assert len(blocks) == N_LAYER
  assert blocks[0]['attn_w'].shape == (N_EMBD, 3 * N_EMBD)  # Conv1D layout kept: x @ W
  for i in range(N_LAYER):
    np.testing.assert_array_equal(blocks[i]['attn_w'], w[f'h.{i}.attn.c_attn.weight'])
    np.testing.assert_array_equal(blocks[i]['mlp_proj_w'], w[f'h.{i}.mlp.c_proj.weight'])
    np.testing.assert_array_equal(blocks[i]['ln_2_g'], w[f'h.{i}.ln_2.weight'])
    assert all(a.dtype == np.float32 for a in blocks[i].values())
  assert model.tokenizer is not None and model.tokenizer.encoder == VOCAB


# ------------------------------------------------------------------------ forward, decode

def test_forward_matches_literal_numpy_forward(folder):
  path, w = folder
  model = g2.load_gpt2(path)
  ids = np.random.default_rng(2).integers(0, V, 13)
  want = np_forward(w, ids)
  fwd = jax.jit(g2.forward, static_argnums=1)
  got = np.asarray(fwd(model.params, model.config, ids))
  assert got.shape == (13, V)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  # Causality: logits of the first 5 positions ignore the later tokens (same length: no
  # second compilation).
  other = np.r_[ids[:5], (ids[5:] + 1) % V]
  changed = np.asarray(fwd(model.params, model.config, other))
  np.testing.assert_allclose(changed[:5], got[:5], atol=1e-5)
  assert np.abs(changed[5:] - got[5:]).max() > 1e-3


def test_untied_lm_head_is_used(tmp_path):
  w = make_folder(str(tmp_path), lm_head=True)
  model = g2.load_gpt2(str(tmp_path))
  assert 'lm_head' in model.params
  ids = np.arange(6)
  np.testing.assert_allclose(np.asarray(jax.jit(g2.forward, static_argnums=1)(
      model.params, model.config, ids)), np_forward(w, ids), atol=1e-4, rtol=1e-4)


def test_greedy_decode_equals_argmax_by_hand_and_compiles_once(folder):
  path, w = folder
  model = g2.load_gpt2(path)
  prompt = model.tokenizer.encode('the cat sat on')
  steps = 8
  seq, probs = list(prompt), []
  for _ in range(steps):
    logits = np_forward(w, np.array(seq))[-1]
    top2 = np.sort(logits)[-2:]
    assert top2[1] - top2[0] > 1e-3  # no near-tie: the float32 argmax is well defined
    seq.append(int(np.argmax(logits)))
    p = np.exp(logits - logits.max())
    probs.append(p.max() / p.sum())
  ids, p_greedy = g2.greedy_decode(model, prompt, steps)
  np.testing.assert_array_equal(ids, seq[len(prompt):])
  np.testing.assert_allclose(p_greedy, probs, atol=1e-4)
  # Same buffer length (prompt + steps), other prompt: the jitted decoder is reused.
  other = [5, 9, 1, 7, 3, 2]
  ids2, _ = g2.greedy_decode(model, other, len(prompt) + steps - len(other))
  assert g2._decoder(model.config, len(prompt) + steps)._cache_size() == 1  # traced once
  ref = list(other)
  for _ in range(len(prompt) + steps - len(other)):
    ref.append(int(np.argmax(np_forward(w, np.array(ref))[-1])))
  np.testing.assert_array_equal(ids2, ref[len(other):])


def test_decode_checks_positions_and_ids(folder):
  model = g2.load_gpt2(folder[0])
  with pytest.raises(g2.GPT2Error, match='^steps: prompt \\+ steps = 65 .*n_positions=64'):
    g2.greedy_decode(model, [1, 2, 3, 4, 5], 60)
  with pytest.raises(g2.GPT2Error, match='^prompt_ids'):
    g2.greedy_decode(model, [1, V], 3)
  with pytest.raises(g2.GPT2Error, match='empty'):
    g2.greedy_decode(model, [], 3)


# ---------------------------------------------------------------------------- tokenizer

def test_bytes_to_unicode_is_gpt2s_printable_bijection():
  m = g2.bytes_to_unicode()
  assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
  assert m[ord(' ')] == 'Ġ' and m[ord('\n')] == 'Ċ' and m[ord('a')] == 'a' and m[0] == 'Ā'
  assert all(c.isprintable() and not c.isspace() for c in m.values())


def test_pretokenizer_splits_like_gpt2():
  split = g2.PRETOKENIZE.findall
  assert split("Hello world's 123 cats!!") == ['Hello', ' world', "'s", ' 123', ' cats', '!!']
  # \s+(?!\S) leaves the last whitespace character to the next piece, as in GPT-2.
  assert split('a  b\n\nc\n\n') == ['a', ' ', ' b', '\n', '\n', 'c', '\n\n']
  assert split('x_y 3.14 naïve') == ['x', '_', 'y', ' 3', '.', '14', ' naïve']
  assert split('東京タワー end  ') == ['東京タワー', ' end', '  ']


def test_bpe_merges_by_rank():
  byte_chars = list(g2.bytes_to_unicode().values())
  vocab = {c: i for i, c in enumerate(byte_chars + ['ab', 'bc', 'abc'])}
  low_ab = g2.BPETokenizer(vocab, [('a', 'b'), ('b', 'c')])
  assert low_ab.bpe('abc') == ['ab', 'c']
  assert g2.BPETokenizer(vocab, [('b', 'c'), ('a', 'b')]).bpe('abc') == ['a', 'bc']
  assert low_ab.bpe('ababx') == ['ab', 'ab', 'x']  # every occurrence of the pair merges at once


@pytest.mark.parametrize('text', ['Hello world', ' the cat sat on the cat.', 'caf\u00e9 123... x',
                                  'tabs\tand\n\nnewlines  ', 'naïve — 東京 😀 ½ ²', "it's, \"ok\""])
def test_bpe_round_trips(folder, text):
  tok = g2.load_tokenizer(folder[0])
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert all(0 <= i < len(VOCAB) for i in ids)


def test_bpe_known_encoding(folder):
  tok = g2.load_tokenizer(folder[0])
  # Worked by hand from the ranks in MERGES: ' on' stays 'Ġ' + 'on' because ('o', 'n') outranks
  # ('Ġ', 'o') and no merge joins 'Ġ' and 'on'.
  assert tok.encode(' the cat sat on the world') == [
      VOCAB[t] for t in ['Ġthe', 'Ġcat', 'Ġsat', 'Ġ', 'on', 'Ġthe', 'Ġworld']]
  assert tok.encode('Hello café 123') == [VOCAB[t] for t in ['Hello', 'Ġc', 'af', 'Ã©', 'Ġ',
                                                                '123']]
  assert tok.encode('café\n\n') == [VOCAB['cafÃ©'], VOCAB['ĊĊ']]
  assert tok.decode([VOCAB['<|endoftext|>']]) == '<|endoftext|>'
  assert tok.decode([VOCAB['Ã']]) == '\ufffd'  # half a UTF-8 character


def test_prompt_token_ids(folder):
  path, _ = folder
  assert g2.prompt_token_ids(path, prompt_ids=['3', ' 7', 0]) == [3, 7, 0]
  assert g2.prompt_token_ids(path, prompt=' the cat') == [VOCAB['Ġthe'], VOCAB['Ġcat']]
  with pytest.raises(g2.GPT2Error, match=r'^prompt_ids=x is invalid'):
    g2.prompt_token_ids(path, prompt_ids=['1', 'x'])
  with pytest.raises(g2.GPT2Error, match=rf'^prompt_ids={V} is invalid'):
    g2.prompt_token_ids(path, prompt_ids=[str(V)])


# --------------------------------------------------------------------------------- errors

def one_line_error(fn, *args, match):
  with pytest.raises(g2.GPT2Error) as e:
    fn(*args)
  msg = str(e.value)
  assert '\n' not in msg and msg.startswith(('model_dir=', 'prompt', 'steps', 'ngram')), msg
  assert isinstance(e.value, ValueError)
  assert match in msg, msg
  return msg


def test_missing_folder_and_files_give_one_line_errors(tmp_path):
  one_line_error(g2.load_gpt2, str(tmp_path / 'nope'), match='no such folder')
  one_line_error(g2.check_model_dir, str(tmp_path / 'nope'), match='no such folder')
  one_line_error(g2.load_gpt2, str(tmp_path), match='has no config.json')
  path = str(tmp_path / 'bin_only')
  make_folder(path)
  os.rename(os.path.join(path, 'model.safetensors'), os.path.join(path, 'pytorch_model.bin'))
  msg = one_line_error(g2.load_gpt2, path, match='has no model.safetensors')
  assert 'pytorch_model.bin' in msg and 'not supported' in msg and 'convert' in msg
  os.remove(os.path.join(path, 'pytorch_model.bin'))
  msg = one_line_error(g2.check_model_dir, path, match='has no model.safetensors')
  assert 'pytorch_model.bin is not supported' in msg


def test_malformed_folders_give_one_line_errors(tmp_path):
  bad_shape = str(tmp_path / 'bad_shape')
  w = random_hf_weights()
  make_folder(bad_shape)
  w['h.1.attn.c_attn.weight'] = w['h.1.attn.c_attn.weight'].T  # nn.Linear layout
  write_safetensors(os.path.join(bad_shape, 'model.safetensors'),
                    {k: (a, 'F32') for k, a in w.items()})
  msg = one_line_error(g2.load_gpt2, bad_shape, match='h.1.attn.c_attn.weight has shape [48, 16]')
  assert 'transposed' in msg
  one_line_error(g2.check_model_dir, bad_shape, match='implies [16, 48]')

  short = str(tmp_path / 'truncated')
  make_folder(short)
  st = os.path.join(short, 'model.safetensors')
  with open(st, 'rb') as f:
    data = f.read()
  with open(st, 'wb') as f:
    f.write(data[:-100])
  one_line_error(g2.load_gpt2, short, match='truncated')
  with open(st, 'wb') as f:
    f.write(b'\xff' * 20)
  one_line_error(g2.load_gpt2, short, match='not a safetensors file')

  for name, value, match in (('n_layer', 3, 'has no tensor h.2.ln_1.weight'),
                             ('n_layer', 1, 'has h.1.ln_1.weight but config.json says n_layer=1'),
                             ('n_embd', 15, 'not a multiple of n_head'),
                             ('model_type', 'llama', 'only gpt2'),
                             ('vocab_size', 'big', 'vocab_size=\'big\' is not a positive')):
    path = str(tmp_path / f'cfg_{name}_{value}')
    make_folder(path, tokenizer=False, config={name: value})
    one_line_error(g2.load_gpt2, path, match=match)

  half = str(tmp_path / 'half_tokenizer')
  make_folder(half)
  os.remove(os.path.join(half, 'merges.txt'))
  one_line_error(g2.load_gpt2, half, match='has vocab.json but no merges.txt')


def test_folder_without_tokenizer_needs_prompt_ids(tmp_path):
  make_folder(str(tmp_path), tokenizer=False)
  assert g2.check_model_dir(str(tmp_path), max_tokens=N_POS) == g2.read_config(str(tmp_path))
  one_line_error(g2.check_model_dir, str(tmp_path), N_POS + 1, match='exceeds')
  model = g2.load_gpt2(str(tmp_path))
  assert model.tokenizer is None and model.token_text(7) == '<7>'
  with pytest.raises(g2.GPT2Error, match=r'^prompt: .* give the prompt as token ids'):
    g2.prompt_token_ids(model, prompt='hello')


# ------------------------------------------------------------------- repetition and panel

def brute_repeated(seq, n):
  return [int(i >= n - 1 and any(seq[j - n + 1:j + 1] == seq[i - n + 1:i + 1]
                                 for j in range(n - 1, i))) for i in range(len(seq))]


def table(*args, **kw):
  return pd.DataFrame(g2.repetition_table(*args, **kw))


def test_repetition_table_against_brute_force():
  rng = np.random.default_rng(3)
  for n in (1, 2, 3, 4):
    seq = list(rng.integers(0, 4, 40))
    np.testing.assert_array_equal(g2.repeated_ngrams(seq, n), brute_repeated(seq, n))
  frame = table([1, 2], [3, 4, 5, 3, 4, 5, 3, 4, 5], str, ngram=3)
  assert list(frame.columns) == g2.TABLE_COLUMNS
  gen = frame[frame['part'] == 'generated']
  assert list(frame['step']) == list(range(-1, 10))
  assert list(gen['repeated']) == [0, 0, 0, 0, 0, 1, 1, 1, 1]
  assert list(gen['seen']) == [0, 0, 0, 1, 1, 1, 1, 1, 1]
  np.testing.assert_allclose(gen['repeated_fraction'].iloc[-1], 4 / 9)
  assert frame['repeated_fraction'][frame['part'] == 'prompt'].isna().all()
  assert g2.loop_period([1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5]) == (3, 9)
  assert g2.loop_period([7, 7, 7, 7]) == (1, 4)
  assert g2.loop_period([1, 2, 3]) == (0, 0)
  # The longest periodic tail wins over a short period at the very end.
  assert g2.loop_period([9, 1, 2, 3, 3, 1, 2, 3, 3, 1, 2, 3, 3]) == (4, 12)


def test_table_survives_csv_and_figure_shows_it(tmp_path, folder):
  texts = {0: 'NA', 1: '\n\n', 2: ' a,"b"', 3: ' $x$', 4: '   ', 5: 'null'}
  frame = table([0, 1], [2, 3, 4, 5, 2, 3, 4, 5], texts.__getitem__, np.full(8, 0.5), ngram=2)
  csv = str(tmp_path / 'gpt2_repetition.csv')
  io.write_csv(frame, csv)
  back = plots.read_frame(csv)
  assert [json.loads(t) for t in back['token_text']] == [texts[i] for i in frame['token_id']]
  fig = plots.plot(csv)
  ax, ax2 = fig.axes[:2]
  # The grid: one cell text per token, the prompt grey, repeated 2-grams red (the last 3).
  assert '2-gram' in ax.get_title() and '4-token cycle' in ax.get_title()
  assert '38% of the 8 generated' in ax.get_title().replace('\n', ' ')
  assert len(ax.texts) == len(back)
  grid = ax.images[0].get_array()
  assert grid.shape == (1, 10)
  np.testing.assert_array_equal(grid[0], [0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
  # The curve: the running repetition fraction ends at 3/8; p_greedy is 0.5 throughout.
  lines = {l.get_label(): l for l in ax2.get_lines()}
  np.testing.assert_allclose(lines['fraction of repeated n-grams'].get_ydata()[-1], 3 / 8)
  np.testing.assert_allclose(lines['p(greedy token)'].get_ydata(), 0.5)
  plots.style.save(fig, str(tmp_path), 'panel')
  assert (tmp_path / 'panel.png').stat().st_size > 0

  model = g2.load_gpt2(folder[0])
  prompt = model.tokenizer.encode('the cat')  # 't', 'he', 'Ġcat'
  # The buffer length of test_greedy_decode_...: its compiled decoder is reused.
  steps = len(model.tokenizer.encode('the cat sat on')) + 8 - len(prompt)
  ids, p = g2.greedy_decode(model, prompt, steps)
  frame = table(prompt, ids, model.token_text, p, ngram=4)
  assert len(frame) == 3 + steps and frame['p_greedy'].iloc[3:].between(0, 1).all()
  assert frame['token_text'].map(json.loads).iloc[:3].tolist() == ['t', 'he', ' cat']


def test_check_inputs_reads_no_weights_and_names_the_argument(tmp_path, folder):
  path, _ = folder
  assert g2.check_inputs(path, ' the cat', [], 10) == [VOCAB['Ġthe'], VOCAB['Ġcat']]
  assert g2.check_inputs(path, '', ['4', '5'], N_POS - 2) == [4, 5]
  with pytest.raises(g2.GPT2Error, match='^steps: prompt \\+ steps = 65'):
    g2.check_inputs(path, '', ['4', '5'], N_POS - 1)
  with pytest.raises(g2.GPT2Error, match='^steps=0 is invalid'):
    g2.check_inputs(path, 'x', [], 0)
  with pytest.raises(g2.GPT2Error, match='^ngram=0 is invalid'):
    g2.check_inputs(path, 'x', [], 3, ngram=0)
  with pytest.raises(g2.GPT2Error, match='^model_dir=.*no such folder') as e:
    g2.check_inputs(str(tmp_path / 'missing'), 'x', [], 5)
  assert e.value.arg == 'model_dir' and isinstance(e.value, io.UserError)
  assert g2.param_count(g2.read_config(path)) == sum(a.size for k, a in folder[1].items()
                                                     if k != 'h.0.attn.bias')
  csv = str(tmp_path / 'empty.csv')
  io.write_csv(table([1, 2], [], str), csv)
  with pytest.raises(io.ResultsError, match='no generated tokens'):
    plots.read_frame(csv)


def test_gpt2_repetition_script(tmp_path, folder):
  """`experiments.gpt2_repetition --hf_model_dir=...` writes its CSV and figure; a bad flag is
  one line naming the script's flag; without the folder it is a one-line notice, exit 0."""
  from conftest import run_module
  args = [f'--hf_model_dir={folder[0]}', '--prompt=the cat', '--steps=12']
  r = run_module('experiments.gpt2_repetition', *args, tmp=tmp_path)
  assert r.returncode == 0, r.stderr
  frame = plots.read_frame(str(tmp_path / 'results' / 'gpt2_repetition.csv'))
  assert len(frame) == 3 + 12 and (frame['part'] == 'generated').sum() == 12
  for ext in ('png', 'pdf'):
    assert (tmp_path / 'figures' / f'gpt2_repetition.{ext}').stat().st_size > 0
  bad = run_module('experiments.gpt2_repetition', f'--hf_model_dir={tmp_path}/none',
                   tmp=tmp_path / 'bad')
  assert bad.returncode == 2 and bad.stderr.strip().startswith(
      f'error: --hf_model_dir={tmp_path}/none: no such folder'), bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1
  skip = run_module('experiments.gpt2_repetition', tmp=tmp_path / 'skip')
  assert skip.returncode == 0 and 'skipped: no --hf_model_dir' in skip.stderr
  assert len(skip.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / 'skip' / 'results')


def test_gpt2_module_is_optional_and_light():
  """The core never imports gpt2, and gpt2 imports neither absl, pandas nor matplotlib (also
  not through ccmc_jax.io): read from the sources, no subprocess needed."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def imports(path):
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
      if isinstance(node, ast.Import):
        out |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        out |= {f'{node.module}.{a.name}' for a in node.names} | {node.module}
    return out

  # The GPT-2 side: gpt2.py, the LM trained here (lm.py and its trial use gpt2's forward) and
  # the LM experiments' trials (ccmc_jax/trials/lm_*.py); nothing else imports them.
  gpt2_side = {os.path.join('ccmc_jax', f) for f in ('gpt2.py', 'lm.py',
                                                      os.path.join('trials', 'train_lm.py'))}
  gpt2_side |= {os.path.relpath(p, root)
                for p in glob.glob(os.path.join(root, 'ccmc_jax', 'trials', 'lm_*.py'))}
  for path in glob.glob(os.path.join(root, 'ccmc_jax', '**', '*.py'), recursive=True):
    if os.path.relpath(path, root) not in gpt2_side:
      assert not {i for i in imports(path) if 'gpt2' in i or i.endswith('.lm')
                  or 'train_lm' in i or '.lm_' in i}, path
  for module in ('gpt2', 'errors'):
    heavy = {i for i in imports(os.path.join(root, 'ccmc_jax', f'{module}.py'))
             if i.split('.')[0] in ('absl', 'pandas', 'matplotlib') or i == 'ccmc_jax.io'}
    assert not heavy, (module, heavy)
  assert not {i for i in imports(os.path.join(root, 'experiments', 'common.py')) if 'gpt2' in i}
