"""GPT-2 from LOCAL files: reader, byte-level BPE tokenizer, JAX forward pass, greedy decoder.

An optional module for the repetition experiment (paper Sec. 4, Fig. 5 left:
``python -m experiments.gpt2_repetition --hf_model_dir=<folder>``) and the trained-LM
experiments (``ccmc_jax/trials/lm_*.py``: batched sliding-window decoding with :func:`decode`,
next-token laws with :func:`next_token_log_probs`); the rest of ``ccmc_jax`` never imports it
and nothing is ever downloaded.

No PyTorch or transformers: a Hugging Face GPT-2 folder is read with numpy (config.json,
model.safetensors, and optionally vocab.json + merges.txt for the tokenizer), the forward pass
runs in JAX, and greedy decoding is one jitted ``lax.scan`` per buffer length.

  ids = check_inputs(model_dir, prompt, prompt_ids, steps)  # cheap: no weights read
  model = load_gpt2(model_dir)                              # GPT2(config, params, tokenizer)
  ids, p = greedy_decode(model, prompt_ids, steps)
  table = repetition_table(prompt_ids, ids, model.token_text, p)  # dict of columns

Every problem with the folder or the arguments is a ``GPT2Error``: one line that starts with
the argument at fault (``model_dir=<folder>: ...``, ``steps=0 is invalid: ...``); ``arg`` and
``rest`` let a command line name its own flag instead. Weights are only read from
``model.safetensors``; a folder with only ``pytorch_model.bin`` must be converted first (e.g.
``safetensors.torch.save_file`` elsewhere).
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import sampling
from ccmc_jax import text
from ccmc_jax.errors import UserError

TABLE_COLUMNS = ['ngram', 'step', 'part', 'token_id', 'token_text', 'seen', 'repeated',
                 'repeated_fraction', 'p_greedy']


class GPT2Error(UserError):
  """A missing, incomplete or malformed GPT-2 folder or a bad argument: one line, ``arg + rest``
  where ``arg`` is the argument at fault (model_dir, prompt, prompt_ids, steps, ngram)."""

  def __init__(self, arg, rest):
    self.arg, self.rest = arg, rest
    super().__init__(arg + rest)


MAX_COUNT = 1024  # GPT-2's context (n_positions): no generation or n-gram is longer


def _check_count(arg, value):
  """Require an integer in [1, MAX_COUNT] (a one-line GPT2Error naming the argument otherwise)."""
  try:
    ok = int(value) == float(value) and 1 <= int(value) <= MAX_COUNT
  except (TypeError, ValueError, OverflowError):
    ok = False
  if not ok:
    raise GPT2Error(arg, f'={value} is invalid: allowed values are an integer in [1, {MAX_COUNT}]')


def _fail(model_dir, msg):
  return GPT2Error('model_dir', f'={model_dir}: {msg}')


# ------------------------------------------------------------------------------------------
# config.json and model.safetensors
# ------------------------------------------------------------------------------------------

class GPT2Config(NamedTuple):
  """The architecture numbers of config.json (hashable: a static argument of ``jax.jit``)."""
  n_layer: int
  n_head: int
  n_embd: int
  vocab_size: int
  n_positions: int
  layer_norm_epsilon: float = 1e-5
  n_inner: int = 0              # MLP width; 0 means 4 * n_embd as in GPT-2
  activation: str = 'gelu_new'  # gelu_new (tanh approximation) or gelu (exact erf)

  @property
  def d_mlp(self):
    return self.n_inner or 4 * self.n_embd


_ACTIVATIONS = {'gelu_new': 'gelu_new', 'gelu_pytorch_tanh': 'gelu_new', 'gelu_fast': 'gelu_new',
                'gelu': 'gelu'}


def read_config(model_dir) -> GPT2Config:
  """Parse ``model_dir/config.json`` (a Hugging Face GPT-2 config); one-line GPT2Error on
  problems. ``n_ctx`` is accepted for ``n_positions`` (old configs)."""
  if not os.path.isdir(model_dir):
    raise _fail(model_dir, 'no such folder (expected a Hugging Face GPT-2 folder with '
                'config.json and model.safetensors)')
  path = os.path.join(model_dir, 'config.json')
  if not os.path.isfile(path):
    raise _fail(model_dir, 'has no config.json (expected a Hugging Face GPT-2 folder)')
  try:
    with open(path, encoding='utf-8') as f:
      cfg = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _fail(model_dir, f'config.json is not readable JSON ({e})') from None
  if not isinstance(cfg, dict):
    raise _fail(model_dir, 'config.json is not a JSON object')
  if cfg.get('model_type', 'gpt2') != 'gpt2':
    raise _fail(model_dir, f'config.json has model_type={cfg["model_type"]!r}; only gpt2 '
                'is supported')
  if 'n_positions' not in cfg and 'n_ctx' in cfg:
    cfg['n_positions'] = cfg['n_ctx']
  values = {}
  for key in ('n_layer', 'n_head', 'n_embd', 'vocab_size', 'n_positions'):
    v = cfg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise _fail(model_dir, f'config.json: {key}={v!r} is not a positive integer')
    values[key] = v
  eps = cfg.get('layer_norm_epsilon', 1e-5)
  if not isinstance(eps, (int, float)) or not 0 < eps < 1:
    raise _fail(model_dir, f'config.json: layer_norm_epsilon={eps!r} is not in (0, 1)')
  n_inner = cfg.get('n_inner') or 0
  if not isinstance(n_inner, int) or n_inner < 0:
    raise _fail(model_dir, f'config.json: n_inner={n_inner!r} is not a positive integer')
  act = cfg.get('activation_function', 'gelu_new')
  if act not in _ACTIVATIONS:
    raise _fail(model_dir, f'config.json: activation_function={act!r} is not supported '
                f'(allowed: {", ".join(_ACTIVATIONS)})')
  for key, standard in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                        ('reorder_and_upcast_attn', False)):
    if cfg.get(key, standard) != standard:
      raise _fail(model_dir, f'config.json: {key}={cfg[key]!r} is not supported '
                  f'(only the standard GPT-2 value {standard})')
  if values['n_embd'] % values['n_head']:
    raise _fail(model_dir, f'config.json: n_embd={values["n_embd"]} is not a multiple of '
                f'n_head={values["n_head"]}')
  return GPT2Config(**values, layer_norm_epsilon=float(eps), n_inner=n_inner,
                    activation=_ACTIVATIONS[act])


# safetensors dtype -> (numpy storage dtype, bytes per element). BF16 is stored as uint16 and
# widened to float32 by a 16-bit shift (bfloat16 is the top half of a float32).
_ST_DTYPES = {'F64': ('<f8', 8), 'F32': ('<f4', 4), 'F16': ('<f2', 2), 'BF16': ('<u2', 2),
              'I64': ('<i8', 8), 'I32': ('<i4', 4), 'I16': ('<i2', 2), 'I8': ('i1', 1),
              'U8': ('u1', 1), 'BOOL': ('?', 1)}


def read_safetensors_header(path, model_dir=None):
  """The tensor table of a .safetensors file without reading the data.

  Format: an 8-byte little-endian header length N, N bytes of JSON
  ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the raw
  little-endian data; offsets are relative to the first byte after the header.

  Returns:
    ``(table, data_start, data_len)`` where ``table`` maps names to ``(dtype, shape, begin,
    end)``. Raises GPT2Error (one line) for a malformed file.
  """
  where = model_dir if model_dir is not None else os.path.dirname(path)
  name = os.path.basename(path)
  try:
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
      head = f.read(8)
      if len(head) < 8:
        raise _fail(where, f'{name} is not a safetensors file (shorter than 8 bytes)')
      n = int.from_bytes(head, 'little')
      if n > size - 8:
        raise _fail(where, f'{name} is not a safetensors file (header length {n} exceeds the '
                    f'file size {size})')
      header = json.loads(f.read(n).decode('utf-8'))
  except OSError as e:
    raise _fail(where, f'cannot read {name} ({e.strerror})') from None
  except (UnicodeDecodeError, json.JSONDecodeError):
    raise _fail(where, f'{name} is not a safetensors file (header is not JSON)') from None
  if not isinstance(header, dict):
    raise _fail(where, f'{name} is not a safetensors file (header is not a JSON object)')
  data_start, data_len = 8 + n, size - 8 - n
  table = {}
  for key, entry in header.items():
    if key == '__metadata__':
      continue
    try:
      dtype, shape, (begin, end) = entry['dtype'], entry['shape'], entry['data_offsets']
      shape = tuple(int(s) for s in shape)
    except (KeyError, TypeError, ValueError):
      raise _fail(where, f'{name}: tensor {key} has a malformed header entry') from None
    if dtype not in _ST_DTYPES:
      table[key] = (dtype, shape, begin, end)  # only an error if the tensor is needed
      continue
    nbytes = math.prod(shape) * _ST_DTYPES[dtype][1]
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len
            and end - begin == nbytes):
      raise _fail(where, f'{name}: tensor {key} has data_offsets [{begin}, {end}] that do not '
                  f'match its {dtype} shape {list(shape)} (data section: {data_len} bytes); '
                  'the file may be truncated')
    table[key] = (dtype, shape, begin, end)
  return table, data_start, data_len


def read_safetensors(path, names: Optional[Sequence[str]] = None, model_dir=None):
  """Read tensors of a .safetensors file into numpy (memory-mapped, then copied).

  Args:
    path: the file.
    names: tensors to read (default: all).
  Returns:
    dict name -> array: F32/F64/F16 and integer dtypes as stored, BF16 widened to float32.
  """
  table, data_start, _ = read_safetensors_header(path, model_dir)
  where = model_dir if model_dir is not None else os.path.dirname(path)
  names = list(table) if names is None else list(names)
  out = {}
  if not names:
    return out
  raw = np.memmap(path, dtype=np.uint8, mode='r', offset=data_start) if os.path.getsize(
      path) > data_start else np.zeros(0, np.uint8)
  for key in names:
    if key not in table:
      raise _fail(where, f'{os.path.basename(path)} has no tensor {key}')
    dtype, shape, begin, end = table[key]
    if dtype not in _ST_DTYPES:
      raise _fail(where, f'{os.path.basename(path)}: tensor {key} has dtype {dtype}; supported: '
                  f'{", ".join(_ST_DTYPES)}')
    storage = np.dtype(_ST_DTYPES[dtype][0])
    count = math.prod(shape)
    a = (np.frombuffer(raw, storage, count, begin) if count else np.zeros(0, storage))
    a = a.reshape(shape).copy()  # copy: detach from the memory map
    if dtype == 'BF16':
      a = (a.astype(np.uint32) << 16).view(np.float32)
    out[key] = a
  del raw
  return out


def safetensors_bytes(tensors: dict, metadata: Optional[dict] = None) -> bytes:
  """The bytes of a .safetensors file holding ``tensors`` (name -> numpy float32 array), the
  inverse of :func:`read_safetensors`: tensors in name order, the JSON header (sorted keys, no
  spaces) padded with spaces to a multiple of 8 bytes as the reference writer does. The same
  arrays always give the same bytes."""
  header, chunks, offset = {}, [], 0
  if metadata:
    header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
  for name in sorted(tensors):
    a = np.asarray(tensors[name])
    if a.dtype != np.float32:
      raise ValueError(f'tensors[{name!r}] has dtype {a.dtype}; only float32 is written')
    raw = a.astype('<f4').tobytes()
    header[name] = {'dtype': 'F32', 'shape': list(a.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header, sort_keys=True, separators=(',', ':')).encode('utf-8')
  text += b' ' * (-len(text) % 8)
  return len(text).to_bytes(8, 'little') + text + b''.join(chunks)


# Per-block tensors: (our name, Hugging Face suffix, shape as a function of the config).
_BLOCK_TENSORS = (
    ('ln_1_g', 'ln_1.weight', lambda c: (c.n_embd,)),
    ('ln_1_b', 'ln_1.bias', lambda c: (c.n_embd,)),
    ('attn_w', 'attn.c_attn.weight', lambda c: (c.n_embd, 3 * c.n_embd)),
    ('attn_b', 'attn.c_attn.bias', lambda c: (3 * c.n_embd,)),
    ('attn_proj_w', 'attn.c_proj.weight', lambda c: (c.n_embd, c.n_embd)),
    ('attn_proj_b', 'attn.c_proj.bias', lambda c: (c.n_embd,)),
    ('ln_2_g', 'ln_2.weight', lambda c: (c.n_embd,)),
    ('ln_2_b', 'ln_2.bias', lambda c: (c.n_embd,)),
    ('fc_w', 'mlp.c_fc.weight', lambda c: (c.n_embd, c.d_mlp)),
    ('fc_b', 'mlp.c_fc.bias', lambda c: (c.d_mlp,)),
    ('mlp_proj_w', 'mlp.c_proj.weight', lambda c: (c.d_mlp, c.n_embd)),
    ('mlp_proj_b', 'mlp.c_proj.bias', lambda c: (c.n_embd,)),
)
_TOP_TENSORS = (
    ('wte', 'wte.weight', lambda c: (c.vocab_size, c.n_embd)),
    ('wpe', 'wpe.weight', lambda c: (c.n_positions, c.n_embd)),
    ('ln_f_g', 'ln_f.weight', lambda c: (c.n_embd,)),
    ('ln_f_b', 'ln_f.bias', lambda c: (c.n_embd,)),
)


def _weights_path(model_dir):
  path = os.path.join(model_dir, 'model.safetensors')
  if os.path.isfile(path):
    return path
  if os.path.isfile(os.path.join(model_dir, 'model.safetensors.index.json')):
    raise _fail(model_dir, 'sharded model.safetensors (model-0000x-of-0000y) is not supported; '
                'save the model as one model.safetensors')
  others = [f for f in ('pytorch_model.bin', 'tf_model.h5', 'flax_model.msgpack')
            if os.path.isfile(os.path.join(model_dir, f))]
  hint = (f' (found {", ".join(others)}: not supported, convert it to model.safetensors, e.g. '
          'with safetensors.torch.save_file on another machine)' if others else
          ' (pytorch_model.bin is not supported: convert it to model.safetensors)')
  raise _fail(model_dir, f'has no model.safetensors{hint}')


def _tensor_names(model_dir, config, table):
  """Map our parameter names to the file's tensor names; check shapes (one-line errors)."""
  prefix = 'transformer.' if 'transformer.wte.weight' in table else ''
  if prefix + 'wte.weight' not in table:
    raise _fail(model_dir, 'model.safetensors has no wte.weight (looked for '
                'transformer.wte.weight and wte.weight): not a GPT-2 checkpoint')
  wanted = {}
  for ours, suffix, shape_fn in _TOP_TENSORS:
    wanted[ours] = (prefix + suffix, shape_fn(config))
  for i in range(config.n_layer):
    for ours, suffix, shape_fn in _BLOCK_TENSORS:
      wanted[f'{ours}/{i}'] = (f'{prefix}h.{i}.{suffix}', shape_fn(config))
  for key in ('lm_head.weight', 'transformer.lm_head.weight'):
    if key in table:
      wanted['lm_head'] = (key, (config.vocab_size, config.n_embd))
      break
  extra_layer = f'{prefix}h.{config.n_layer}.ln_1.weight'
  if extra_layer in table:
    raise _fail(model_dir, f'model.safetensors has {extra_layer} but config.json says '
                f'n_layer={config.n_layer}')
  for ours, (key, shape) in wanted.items():
    if key not in table:
      raise _fail(model_dir, f'model.safetensors has no tensor {key} (needed by a GPT-2 with '
                  f'n_layer={config.n_layer})')
    got = tuple(table[key][1])
    if got != shape:
      hint = ''
      if len(shape) == 2 and got == shape[::-1] and shape[0] != shape[1]:
        hint = ' (transposed: GPT-2 Conv1D weights are stored as (in, out))'
      raise _fail(model_dir, f'model.safetensors: {key} has shape {list(got)} but config.json '
                  f'implies {list(shape)}{hint}')
  return wanted


def param_count(config: GPT2Config) -> int:
  """Number of parameters (tied lm_head): sizes the float32 copy that :func:`load_gpt2` makes."""
  shapes = [f(config) for _, _, f in _TOP_TENSORS]
  shapes += [f(config) for _, _, f in _BLOCK_TENSORS] * config.n_layer
  return sum(math.prod(s) for s in shapes)


def param_shapes(config: GPT2Config) -> dict:
  """The shape of every parameter of :class:`GPT2` ``params`` (tied lm_head): top-level names,
  and ``blocks`` a list of per-layer dicts, the layout :func:`load_gpt2` returns."""
  shapes = {ours: shape_fn(config) for ours, _, shape_fn in _TOP_TENSORS}
  shapes['blocks'] = [{ours: shape_fn(config) for ours, _, shape_fn in _BLOCK_TENSORS}
                      for _ in range(config.n_layer)]
  return shapes


def params_to_tensors(params, config: GPT2Config, prefix='transformer.') -> dict:
  """``params`` (the :class:`GPT2` layout, tied lm_head) as Hugging Face tensor names ->
  float32 numpy arrays, the inverse of :func:`load_gpt2`'s mapping. Raises ValueError naming
  the parameter whose shape disagrees with ``config``."""
  out = {}
  items = [(ours, suffix, shape_fn, params[ours]) for ours, suffix, shape_fn in _TOP_TENSORS]
  if len(params['blocks']) != config.n_layer:
    raise ValueError(f'params has {len(params["blocks"])} blocks but n_layer={config.n_layer}')
  for i, p in enumerate(params['blocks']):
    items += [(f'{ours}/{i}', f'h.{i}.{suffix}', shape_fn, p[ours])
              for ours, suffix, shape_fn in _BLOCK_TENSORS]
  for ours, suffix, shape_fn, value in items:
    a = np.asarray(value, np.float32)
    if a.shape != shape_fn(config):
      raise ValueError(f'params[{ours!r}] has shape {a.shape}, config implies '
                       f'{shape_fn(config)}')
    out[prefix + suffix] = a
  return out


def config_dict(config: GPT2Config) -> dict:
  """The config.json of ``config`` (a Hugging Face GPT-2 config that :func:`read_config` reads
  back to the same GPT2Config)."""
  act = {'gelu_new': 'gelu_new', 'gelu': 'gelu'}[config.activation]
  return {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'],
          'n_layer': config.n_layer, 'n_head': config.n_head, 'n_embd': config.n_embd,
          'vocab_size': config.vocab_size, 'n_positions': config.n_positions,
          'n_ctx': config.n_positions, 'n_inner': config.n_inner or None,
          'layer_norm_epsilon': config.layer_norm_epsilon, 'activation_function': act,
          'tie_word_embeddings': True}


def check_model_dir(model_dir, max_tokens: Optional[int] = None) -> GPT2Config:
  """Cheap validation: config.json, the safetensors header and every tensor shape, without
  reading the weights. ``max_tokens`` (prompt + steps) must fit n_positions.

  Returns:
    the GPT2Config. Raises GPT2Error (one line) otherwise.
  """
  config = read_config(model_dir)
  table, _, _ = read_safetensors_header(_weights_path(model_dir), model_dir)
  _tensor_names(model_dir, config, table)
  if max_tokens is not None and max_tokens > config.n_positions:
    raise GPT2Error('steps', f': prompt + steps = {max_tokens} tokens exceeds the model\'s '
                    f'n_positions={config.n_positions}')
  return config


class GPT2(NamedTuple):
  """A loaded model: the config, float32 numpy parameters (``params['blocks']`` is a list of
  per-layer dicts) and the tokenizer (None when vocab.json/merges.txt are absent).

  Layers are a Python list, unrolled under jit: on CPU, ``lax.scan`` over stacked layer weights
  copies each layer's slice every step (2x slower decoding for GPT-2 small in our timing)."""
  config: GPT2Config
  params: dict
  tokenizer: Optional['BPETokenizer']  # or a WordTokenizer (word-level folders)
  model_dir: str = ''

  def token_text(self, token_id: int) -> str:
    """The text of one token (``<id>`` without a tokenizer or for an id vocab.json lacks,
    e.g. an embedding row padded beyond the vocabulary)."""
    if self.tokenizer is None or int(token_id) not in self.tokenizer.decoder:
      return f'<{int(token_id)}>'
    return self.tokenizer.decode([int(token_id)])


def load_gpt2(model_dir) -> GPT2:
  """Load a local Hugging Face GPT-2 folder (config.json + model.safetensors [+ vocab.json,
  merges.txt]) with numpy. Key prefixes ``transformer.h.0...`` and ``h.0...`` both work; the
  Conv1D weights keep their (in, out) layout, used as ``x @ W``. F32, F16 and BF16 are read and
  converted to float32. An ``lm_head.weight`` is used when present, else the tied ``wte``.

  Returns:
    GPT2(config, params, tokenizer, model_dir). Raises GPT2Error (one line) on any problem.
  References: Radford et al. (2019), GPT-2; paper Fig. 5 (left).
  """
  config = read_config(model_dir)
  path = _weights_path(model_dir)
  table, _, _ = read_safetensors_header(path, model_dir)
  wanted = _tensor_names(model_dir, config, table)
  arrays = read_safetensors(path, [k for k, _ in wanted.values()], model_dir)
  flat = {ours: arrays[key].astype(np.float32, copy=False) for ours, (key, _) in wanted.items()}
  for ours, a in flat.items():
    if not np.all(np.isfinite(a)):
      raise _fail(model_dir, f'model.safetensors: {wanted[ours][0]} has non-finite values')
  params = {k: flat[k] for k, _, _ in _TOP_TENSORS}
  if 'lm_head' in flat and not np.array_equal(flat['lm_head'], flat['wte']):
    params['lm_head'] = flat['lm_head']
  params['blocks'] = [{k: flat[f'{k}/{i}'] for k, _, _ in _BLOCK_TENSORS}
                      for i in range(config.n_layer)]
  return GPT2(config, params, load_tokenizer(model_dir), str(model_dir))


# ------------------------------------------------------------------------------------------
# Forward pass and greedy decoding (JAX)
# ------------------------------------------------------------------------------------------

def _layer_norm(x, g, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps) * g + b


def _gelu(x, activation):
  if activation == 'gelu':
    return jax.nn.gelu(x, approximate=False)
  # gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as in GPT-2.
  return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _block(x, p, config: GPT2Config, keys_values):
  """One pre-LN transformer block on ``x`` (T, D), the T newest positions.

  ``keys_values(k, v)`` receives the new positions' keys and values, each (T, H, hd), and
  returns ``(keys, values, mask)``: every attended position's keys and values (S, H, hd) and
  the (T, S) boolean mask of which of them each new position sees (causal). The full forward
  pass passes them through; the decoder writes them into its cache.

  Returns:
    (new x (T, D), keys, values).
  """
  T, D, H = x.shape[0], config.n_embd, config.n_head
  hd = D // H
  h = _layer_norm(x, p['ln_1_g'], p['ln_1_b'], config.layer_norm_epsilon)
  q, k, v = (a.reshape(T, H, hd) for a in jnp.split(h @ p['attn_w'] + p['attn_b'], 3, axis=-1))
  keys, values, mask = keys_values(k, v)
  s = jnp.einsum('thd,shd->hts', q, keys) / math.sqrt(hd)
  a = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
  x = x + jnp.einsum('hts,shd->thd', a, values).reshape(T, D) @ p['attn_proj_w'] + p[
      'attn_proj_b']
  m = _layer_norm(x, p['ln_2_g'], p['ln_2_b'], config.layer_norm_epsilon)
  m = _gelu(m @ p['fc_w'] + p['fc_b'], config.activation)
  return x + m @ p['mlp_proj_w'] + p['mlp_proj_b'], keys, values


def _unembed(x, params, config):
  x = _layer_norm(x, params['ln_f_g'], params['ln_f_b'], config.layer_norm_epsilon)
  # (vocab, n_embd) @ x without transposing the largest matrix (a transposed copy per step).
  return jnp.einsum('vd,...d->...v', params.get('lm_head', params['wte']), x)


def forward(params, config: GPT2Config, ids_T):
  """Logits of every position of one sequence: the full causal GPT-2 forward pass.

  Args:
    params: ``GPT2.params`` (numpy or jax arrays).
    config: the GPT2Config (static under ``jax.jit``).
    ids_T: int token ids, shape (T,), T <= n_positions.
  Returns:
    logits, shape (T, vocab_size); row t predicts token t + 1.
  References: Radford et al. (2019): pre-LN blocks, causal multi-head attention, gelu_new MLP,
    final ln_f, lm_head tied to the token embedding.
  """
  T = ids_T.shape[0]
  x = params['wte'][ids_T] + params['wpe'][:T]
  causal = jnp.tril(jnp.ones((T, T), bool))
  for p in params['blocks']:
    x, _, _ = _block(x, p, config, lambda k, v: (k, v, causal))
  return _unembed(x, params, config)


@functools.lru_cache(maxsize=None)
def _decoder(config: GPT2Config, S: int):
  """jit of greedy decoding on a token buffer of length S (prompt + steps).

  One ``lax.scan`` over positions t = 0..S-2 feeds token t (with a key/value cache per layer,
  so each step costs one token's forward pass) and writes token t + 1: the prompt's token while
  t + 1 < prompt_len (a traced scalar, so one compilation serves every prompt of this S), else
  the argmax of the logits.
  """
  H, hd = config.n_head, config.n_embd // config.n_head
  positions = jnp.arange(S)

  def run(params, buffer_S, prompt_len):
    def step(carry, t):
      tokens, k_cache, v_cache = carry  # (S,) and per layer (S, H, hd) keys and values
      x = (params['wte'][tokens[t]] + params['wpe'][t])[None]
      new_k, new_v = [], []
      for p, k_l, v_l in zip(params['blocks'], k_cache, v_cache):
        x, k_l, v_l = _block(x, p, config, lambda k, v, k_l=k_l, v_l=v_l: (
            k_l.at[t].set(k[0]), v_l.at[t].set(v[0]), (positions <= t)[None]))
        new_k.append(k_l)
        new_v.append(v_l)
      logits = _unembed(x[0], params, config)
      nxt = jnp.argmax(logits).astype(tokens.dtype)
      p_greedy = jnp.exp(logits[nxt] - jax.nn.logsumexp(logits))
      tokens = tokens.at[t + 1].set(jnp.where(t + 1 < prompt_len, tokens[t + 1], nxt))
      return (tokens, new_k, new_v), p_greedy

    cache = [jnp.zeros((S, H, hd), jnp.float32) for _ in params['blocks']]
    (tokens, _, _), p = jax.lax.scan(step, (buffer_S, cache, cache), jnp.arange(S - 1))
    return tokens, p

  return jax.jit(run)


def greedy_decode(model: GPT2, prompt_ids: Sequence[int], steps: int):
  """Greedy decoding (argmax at every step, no sampling) of ``steps`` tokens after a prompt.

  Args:
    model: a loaded GPT2.
    prompt_ids: at least one token id in [0, vocab_size).
    steps: number of generated tokens; len(prompt_ids) + steps <= n_positions.
  Returns:
    (ids, p_greedy): int32 (steps,) generated tokens and float32 (steps,) the model's
    probability of each generated (argmax) token.
  References: paper Fig. 5 (left): greedy GPT-2 output degenerating into repetition.
  """
  prompt = np.asarray(prompt_ids, np.int64).reshape(-1)
  c = model.config
  if prompt.size == 0:
    raise GPT2Error('prompt', ': the prompt is empty; give at least one token')
  if prompt.min() < 0 or prompt.max() >= c.vocab_size:
    raise GPT2Error('prompt_ids', f': token ids must be in [0, {c.vocab_size - 1}]')
  _check_count('steps', steps)
  S = prompt.size + int(steps)
  if S > c.n_positions:
    raise GPT2Error('steps', f': prompt + steps = {S} tokens exceeds the model\'s '
                    f'n_positions={c.n_positions}')
  buffer = np.zeros(S, np.int32)
  buffer[:prompt.size] = prompt
  tokens, p = _decoder(c, S)(model.params, jnp.asarray(buffer), jnp.int32(prompt.size))
  return (np.asarray(tokens[prompt.size:], np.int32),
          np.asarray(p[prompt.size - 1:], np.float32))


# ------------------------------------------------------------------------------------------
# Sliding-window decoding beyond the context, batched over prompts (greedy and sampled)
# ------------------------------------------------------------------------------------------

MAX_STEPS = 100_000  # sliding-window generations may run past n_positions


def _window_logits(params, config: GPT2Config, window_S, count):
  """Next-token logits after the last ``count`` tokens of ``window_S`` (S = n_positions).

  The first ``S - count`` entries are padding: masked out as keys, and the ``count`` real tokens
  get positions ``0..count-1`` (absolute positions restart in every window). A padded query
  attends to itself only, so no row is all ``-inf`` (a NaN there would reach the real rows
  through ``0 * NaN`` in the next layer). Equals ``forward(window_S[-count:])[-1]``.
  """
  S = window_S.shape[0]
  j = jnp.arange(S)
  offset = S - count
  pos = jnp.maximum(j - offset, 0)
  x = params['wte'][window_S] + params['wpe'][pos]
  causal = j[None, :] <= j[:, None]
  mask = causal & ((j >= offset)[None, :] | (j[None, :] == j[:, None]))
  for p in params['blocks']:
    x, _, _ = _block(x, p, config, lambda k, v: (k, v, mask))
  return _unembed(x[-1], params, config)


def _check_contexts(config: GPT2Config, contexts, arg='prompts'):
  """A (N, C) int array of token ids in [0, vocab_size), N, C >= 1 (one-line GPT2Error)."""
  X = np.asarray(contexts)
  if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1 or not np.issubdtype(X.dtype, np.integer):
    raise GPT2Error(arg, f': expected a (N, length) integer array with N, length >= 1, got '
                    f'{X.dtype} shape {X.shape}')
  if X.min() < 0 or X.max() >= config.vocab_size:
    raise GPT2Error(arg, f': token ids must be in [0, {config.vocab_size - 1}]')
  return X.astype(np.int32)


@functools.lru_cache(maxsize=None)
def _next_token_program(config: GPT2Config, C: int, batch: int):
  """jit: (N, C) contexts -> (N, vocab_size) float32 log-probabilities of the next token, each
  from its last min(C, n_positions) tokens, ``batch`` contexts at a time (``lax.map``)."""
  S = config.n_positions
  count = min(C, S)

  def next_token_log_probs(params, contexts_NxC):
    window = contexts_NxC[:, C - count:]
    if count < S:
      window = jnp.pad(window, ((0, 0), (S - count, 0)))
    return jax.lax.map(lambda w: jax.nn.log_softmax(_window_logits(params, config, w, count)),
                       window, batch_size=batch)

  return jax.jit(next_token_log_probs)


def next_token_log_probs(model: GPT2, contexts, batch: int = 256) -> np.ndarray:
  """The model's next-token law after each context, from its last ``n_positions`` tokens.

  Args:
    model: a loaded GPT2.
    contexts: (N, C) token ids; a context longer than n_positions is cut to its last
      n_positions tokens (positions 0..n_positions-1), a shorter one is used whole.
    batch: contexts per forward pass (memory: batch x n_positions activations).
  Returns:
    (N, vocab_size) float32 log-probabilities. Equals ``log_softmax(forward(context)[-1])``.
  References: Radford et al. (2019); the LM side of the CCMC comparison (paper Lemma 2.2).
  """
  X = _check_contexts(model.config, contexts, 'contexts')
  _check_count('batch', batch)
  fn = _next_token_program(model.config, X.shape[1], int(batch))
  return np.asarray(fn(model.params, jnp.asarray(X)))


@functools.lru_cache(maxsize=None)
def _window_decoder(config: GPT2Config, P: int, T: int):
  """jit of batched decoding of T tokens after (N, P) prompts with a sliding window.

  One ``lax.scan`` over the T steps (one compilation per shape (N, P, T), whatever the
  temperature and the key): step t feeds the last min(P + t, n_positions) tokens, left-padded
  to n_positions, through :func:`_window_logits` (vmapped over prompts) and appends the argmax
  (temperature 0) or an inverse-CDF draw from softmax(logits / temperature) with one uniform per
  row (cheaper than a Gumbel vector over the vocabulary). No key/value cache: positions restart
  in every window, so each step recomputes the whole window.
  """
  S = config.n_positions

  def sliding_window_decode(params, prompts_NxP, keys_N, temperature):
    N = prompts_NxP.shape[0]
    buf = jnp.zeros((N, S + P + T), jnp.int32).at[:, S:S + P].set(prompts_NxP)
    rows = jnp.arange(N)
    hot = temperature > 0
    inv_temp = 1.0 / jnp.where(hot, temperature, 1.0)

    def step(buf, t):
      end = S + P + t  # the column this step writes
      window = jax.lax.dynamic_slice_in_dim(buf, end - S, S, axis=1)
      count = jnp.minimum(P + t, S)
      logits = jax.vmap(lambda w: _window_logits(params, config, w, count))(window)
      logp = jax.nn.log_softmax(logits, axis=-1)
      u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, t)))(keys_N)
      drawn = sampling.categorical_from_uniform(u, jax.nn.log_softmax(logits * inv_temp, -1))
      y = jnp.where(hot, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)
      buf = jax.lax.dynamic_update_slice_in_dim(buf, y[:, None], end, axis=1)
      return buf, logp[rows, y]

    buf, logp = jax.lax.scan(step, buf, jnp.arange(T))
    return buf[:, S + P:], logp.T

  return jax.jit(sliding_window_decode)


def decode(model: GPT2, prompts, steps: int, *, key=None, temperature: float = 0.0):
  """Decode ``steps`` tokens after each of N prompts at once: greedy (``temperature=0``) or
  sampled from softmax(logits / temperature), with a sliding window of the last n_positions
  tokens once the text outgrows the context (absolute positions then restart at 0 in every
  window: the model sees each window as a fresh text).

  Args:
    model: a loaded GPT2.
    prompts: (N, P) token ids in [0, vocab_size).
    steps: tokens to generate per prompt, in [1, 100000] (may exceed n_positions).
    key: PRNG key (needed when temperature > 0); prompt i draws from ``fold_in(key, i)``,
      step t from ``fold_in(fold_in(key, i), t)``, so a row does not depend on N.
    temperature: >= 0 (a traced value: greedy and every temperature share one compilation).
  Returns:
    (tokens, log_p): int32 (N, steps) generated tokens and float32 (N, steps) the model's
    log-probability (at temperature 1) of each generated token.
  References: paper Fig. 5 (left): a language model's output degenerating into repetition.
  """
  X = _check_contexts(model.config, prompts)
  try:
    ok = int(steps) == float(steps) and 1 <= int(steps) <= MAX_STEPS
  except (TypeError, ValueError, OverflowError):
    ok = False
  if not ok:
    raise GPT2Error('steps', f'={steps} is invalid: allowed values are an integer in '
                    f'[1, {MAX_STEPS}]')
  try:
    temp = float(temperature)
  except (TypeError, ValueError):
    temp = math.nan
  if not (math.isfinite(temp) and temp >= 0):
    raise GPT2Error('temperature', f'={temperature} is invalid: allowed values are finite '
                    'numbers >= 0')
  if key is None:
    if temp > 0:
      raise GPT2Error('temperature', f'={temp:g} needs a PRNG key (key=...)')
    key = jax.random.PRNGKey(0)  # unused by greedy decoding
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(X.shape[0]))
  tokens, logp = _window_decoder(model.config, X.shape[1], int(steps))(
      model.params, jnp.asarray(X), keys, jnp.float32(temp))
  return np.asarray(tokens, np.int32), np.asarray(logp, np.float32)


# ------------------------------------------------------------------------------------------
# Byte-level BPE tokenizer (vocab.json + merges.txt)
# ------------------------------------------------------------------------------------------

def bytes_to_unicode():
  """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
  bs = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('\xa1'), ord('\xac') + 1))
        + list(range(ord('\xae'), ord('\xff') + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


# GPT-2's pre-tokenisation pattern is
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Python's `re` has no \p{..}: letters are approximated by [^\W\d_] (word characters that are
# not decimal digits or '_') and numbers by \d (decimal digits, Unicode category Nd). The two
# differ only on non-decimal numerals (Nl, No: e.g. '²', '½', 'Ⅻ'), which here group with
# letters instead of numbers; ASCII and ordinary Unicode text split exactly as in GPT-2.
PRETOKENIZE = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


class BPETokenizer:
  """GPT-2 byte-level BPE: regex pre-tokenisation, bytes -> printable unicode, then merges
  applied by rank (lowest first) within each piece. Special tokens such as <|endoftext|> are not
  parsed from text (they encode as ordinary characters) but decode normally."""

  def __init__(self, encoder: dict, merges: Sequence[tuple]):
    self.encoder = dict(encoder)
    self.decoder = {v: k for k, v in self.encoder.items()}
    self.ranks = {tuple(m): i for i, m in enumerate(merges)}
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
    self._cache = {}

  def bpe(self, piece: str) -> list:
    """Apply the merges to one pre-token (already mapped to byte characters)."""
    if piece in self._cache:
      return self._cache[piece]
    word = list(piece)
    while len(word) > 1:
      pairs = set(zip(word[:-1], word[1:]))
      best = min(pairs, key=lambda pair: self.ranks.get(pair, math.inf))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    self._cache[piece] = word
    return word

  def encode(self, text: str) -> list:
    """Token ids of ``text``."""
    ids = []
    for piece in PRETOKENIZE.findall(text):
      chars = ''.join(self.byte_encoder[b] for b in piece.encode('utf-8'))
      for token in self.bpe(chars):
        if token not in self.encoder:
          raise ValueError(f'token {token!r} is not in vocab.json (vocab and merges disagree)')
        ids.append(self.encoder[token])
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of token ids (invalid UTF-8, e.g. half a character, becomes U+FFFD)."""
    try:
      chars = ''.join(self.decoder[int(i)] for i in ids)
    except KeyError as e:
      raise ValueError(f'token id {e.args[0]} is not in vocab.json') from None
    return bytes(self.byte_decoder[c] for c in chars).decode('utf-8', errors='replace')


# ------------------------------------------------------------------------------------------
# Word-level tokenizer (the suite's own word vocabulary: vocab.json + a word-level marker)
# ------------------------------------------------------------------------------------------

WORD_LEVEL = 'CcmcWordTokenizer'  # tokenizer_config.json's tokenizer_class of a word vocabulary


class WordTokenizer:
  """The suite's word vocabulary (``ccmc_jax.text``): lower-cased words and punctuation
  (:func:`ccmc_jax.text.tokenize`), id k = the k-th word of vocab.json, words outside it ->
  ``<unk>``; decoding joins words with spaces (:func:`ccmc_jax.text.detokenize`)."""

  def __init__(self, encoder: dict):
    self.encoder = dict(encoder)
    self.vocab = [w for w, _ in sorted(self.encoder.items(), key=lambda kv: kv[1])]
    self.decoder = dict(enumerate(self.vocab))

  def encode(self, text_: str) -> list:
    """Token ids of ``text_``."""
    return text.encode(text.tokenize(text_), self.vocab).tolist()

  def decode(self, ids: Sequence[int]) -> str:
    """Text of token ids."""
    bad = [int(i) for i in ids if int(i) not in self.decoder]
    if bad:
      raise ValueError(f'token id {bad[0]} is not in vocab.json')
    return text.detokenize(np.asarray(ids, np.int64), self.vocab)


def word_tokenizer_config(vocab_size: int, model_max_length: int) -> dict:
  """The tokenizer_config.json of a word-level folder (read by :func:`load_tokenizer`)."""
  return {'tokenizer_class': WORD_LEVEL, 'word_level': True, 'unk_token': text.UNK,
          'vocab_size': vocab_size, 'model_max_length': model_max_length,
          'tokenize': 'ccmc_jax.text.tokenize (lower-cased words and punctuation)'}


def _load_word_tokenizer(model_dir, vocab_path) -> WordTokenizer:
  try:
    with open(vocab_path, encoding='utf-8') as f:
      encoder = json.load(f)
  except FileNotFoundError:
    raise _fail(model_dir, 'tokenizer_config.json says word-level but there is no vocab.json '
                '(word -> id)') from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _fail(model_dir, f'vocab.json is not readable ({e})') from None
  if not isinstance(encoder, dict) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in encoder.values()):
    raise _fail(model_dir, 'vocab.json is not a JSON object of word -> id')
  if sorted(encoder.values()) != list(range(len(encoder))):
    raise _fail(model_dir, f'vocab.json: the ids of its {len(encoder)} words are not exactly '
                f'0..{len(encoder) - 1}')
  if text.UNK not in encoder:
    raise _fail(model_dir, f'vocab.json has no {text.UNK} (a word-level vocabulary needs it)')
  return WordTokenizer(encoder)


def _word_level(model_dir) -> bool:
  """Whether tokenizer_config.json marks the folder's vocab.json as word-level."""
  path = os.path.join(model_dir, 'tokenizer_config.json')
  if not os.path.isfile(path):
    return False
  try:
    with open(path, encoding='utf-8') as f:
      cfg = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _fail(model_dir, f'tokenizer_config.json is not readable JSON ({e})') from None
  return isinstance(cfg, dict) and cfg.get('tokenizer_class') == WORD_LEVEL


def load_tokenizer(model_dir):
  """The tokenizer of ``model_dir``: a :class:`WordTokenizer` when tokenizer_config.json says
  word-level (vocab.json word -> id), else the BPE tokenizer (vocab.json + merges.txt), or None
  if both files are absent.

  Raises GPT2Error (one line) if only one of them exists or either is malformed.
  """
  vocab_path = os.path.join(model_dir, 'vocab.json')
  merges_path = os.path.join(model_dir, 'merges.txt')
  if _word_level(model_dir):
    return _load_word_tokenizer(model_dir, vocab_path)
  have = [os.path.isfile(vocab_path), os.path.isfile(merges_path)]
  if not any(have):
    return None
  if not all(have):
    missing = 'merges.txt' if have[0] else 'vocab.json'
    raise _fail(model_dir, f'has {"vocab.json" if have[0] else "merges.txt"} but no {missing} '
                f'(the GPT-2 tokenizer needs both; without them give the prompt as token ids)')
  try:
    with open(vocab_path, encoding='utf-8') as f:
      encoder = json.load(f)
    with open(merges_path, encoding='utf-8') as f:
      lines = f.read().split('\n')
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _fail(model_dir, f'vocab.json or merges.txt is not readable ({e})') from None
  if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
    raise _fail(model_dir, 'vocab.json is not a JSON object of token -> id')
  merges = []
  for n, line in enumerate(lines, 1):
    if not line.strip() or (n == 1 and line.startswith('#version')):
      continue
    parts = line.split()
    if len(parts) != 2:
      raise _fail(model_dir, f'merges.txt line {n} is not two tokens: {line[:40]!r}')
    merges.append(tuple(parts))
  tokenizer = BPETokenizer(encoder, merges)
  missing = [c for c in tokenizer.byte_decoder if c not in encoder]
  if missing:
    raise _fail(model_dir, f'vocab.json lacks {len(missing)} of the 256 byte tokens '
                f'(e.g. {missing[0]!r}): not a byte-level BPE vocabulary')
  return tokenizer


def prompt_token_ids(model_or_dir, prompt: str = '', prompt_ids: Sequence = ()) -> list:
  """The prompt as token ids: ``prompt_ids`` (ints or strings, e.g. a comma-separated list
  flag) if given, else ``prompt`` encoded with the folder's tokenizer.

  ``model_or_dir`` is a loaded GPT2 or a folder (only config.json and the tokenizer are read,
  so this is cheap enough for an argument check). Raises GPT2Error (one line).
  """
  if isinstance(model_or_dir, GPT2):
    config, tokenizer, model_dir = model_or_dir.config, model_or_dir.tokenizer, \
        model_or_dir.model_dir
  else:
    model_dir = model_or_dir
    config, tokenizer = read_config(model_dir), load_tokenizer(model_dir)
  if prompt_ids:
    ids = []
    for v in prompt_ids:
      try:
        i = int(str(v).strip())
      except ValueError:
        i = -1
      if not 0 <= i < config.vocab_size:
        raise GPT2Error('prompt_ids', f'={v} is invalid: allowed values are token ids in '
                        f'[0, {config.vocab_size - 1}]')
      ids.append(i)
    return ids
  if tokenizer is None:
    raise GPT2Error('prompt', f': {model_dir} has no vocab.json/merges.txt to encode text; '
                    'give the prompt as token ids instead')
  if not prompt:
    raise GPT2Error('prompt', ' is empty: give a prompt text or token ids')
  try:
    ids = tokenizer.encode(prompt)
  except ValueError as e:
    raise _fail(model_dir, str(e)) from None
  bad = [i for i in ids if i >= config.vocab_size]
  if bad:
    raise _fail(model_dir, f'the tokenizer gives id {bad[0]} >= vocab_size={config.vocab_size}')
  return ids


def check_arguments(prompt_ids: Sequence, steps: int, ngram: int = 4):
  """The checks of a generation's arguments that need no model folder: ``steps`` and
  ``ngram`` integers in [1, 1024], each of ``prompt_ids`` an integer >= 0 (the vocabulary's upper
  bound is checked with the folder, by :func:`prompt_token_ids`). One-line GPT2Error."""
  _check_count('steps', steps)
  _check_count('ngram', ngram)
  for v in prompt_ids:
    try:
      ok = 0 <= int(str(v).strip()) < 2**31  # int32 token ids; the vocab bound needs the folder
    except ValueError:
      ok = False
    if not ok:
      raise GPT2Error('prompt_ids', f'={v} is invalid: allowed values are token ids, '
                      'integers in [0, 2^31 - 1] (below the model\'s vocab_size)')


def check_inputs(model_dir, prompt: str, prompt_ids: Sequence, steps: int,
                 ngram: int = 4) -> list:
  """Every argument check of a generation, before any work (reads config.json, the
  safetensors header and the tokenizer, not the weights): one-line GPT2Error.

  Returns:
    the prompt's token ids.
  """
  check_arguments(prompt_ids, steps, ngram)
  check_model_dir(model_dir)
  ids = prompt_token_ids(model_dir, prompt, prompt_ids)
  check_model_dir(model_dir, max_tokens=len(ids) + int(steps))
  return ids


# ------------------------------------------------------------------------------------------
# Repetition statistics
# ------------------------------------------------------------------------------------------

def repeated_ngrams(seq: Sequence[int], n: int) -> np.ndarray:
  """``out[i] = 1`` if the n-gram ending at position i also ends at some earlier position
  (positions i < n - 1 have no full n-gram: 0)."""
  seen, out = set(), np.zeros(len(seq), np.int64)
  for i in range(n - 1, len(seq)):
    g = tuple(seq[i - n + 1:i + 1])
    out[i] = g in seen
    seen.add(g)
  return out


def loop_period(seq: Sequence[int]):
  """The cycle the sequence ends in: ``(p, tail_len)`` where the last ``tail_len`` tokens have
  period ``p`` (``seq[i] == seq[i - p]`` throughout) and span at least two full cycles; among
  such periods the one covering the longest tail (then the shortest p). ``(0, 0)`` if none."""
  seq, best = list(seq), (0, 0)
  for p in range(1, len(seq) // 2 + 1):
    run = 0
    while run < len(seq) - p and seq[-1 - run] == seq[-1 - run - p]:
      run += 1
    if run >= p and run + p > best[1]:
      best = (p, run + p)
  return best


def repetition_table(prompt_ids: Sequence[int], ids: Sequence[int],
                     token_text: Callable[[int], str], p_greedy: Optional[Sequence[float]] = None,
                     ngram: int = 4) -> dict:
  """The long-format table of one generation, as columns: one row per token, prompt included.

  Columns (``TABLE_COLUMNS``): ``ngram`` (the n of the n-grams), ``step`` (generated tokens
  1..steps; the prompt's tokens 1 - len(prompt)..0), ``part`` (prompt / generated),
  ``token_id``, ``token_text`` (a JSON string literal, so newlines, commas and texts such as
  "NA" survive a CSV), ``seen`` (the token occurred earlier in the text), ``repeated`` (the
  ``ngram``-gram ending here occurred earlier), ``repeated_fraction`` (running mean of
  ``repeated`` over the generated tokens; NaN for the prompt), ``p_greedy`` (the model's
  probability of the generated token; NaN for the prompt).
  """
  prompt_ids, ids = [int(i) for i in prompt_ids], [int(i) for i in ids]
  seq = prompt_ids + ids
  P = len(prompt_ids)
  repeated = repeated_ngrams(seq, ngram)
  seen, earlier = np.zeros(len(seq), np.int64), set()
  for i, token in enumerate(seq):
    seen[i] = token in earlier
    earlier.add(token)
  frac = np.full(len(seq), np.nan)
  frac[P:] = np.cumsum(repeated[P:]) / np.arange(1, len(ids) + 1)
  p = np.full(len(seq), np.nan)
  if p_greedy is not None:
    p[P:] = np.asarray(p_greedy, np.float64)
  return {'ngram': np.full(len(seq), ngram), 'step': np.arange(1 - P, len(ids) + 1),
          'part': np.array(['prompt'] * P + ['generated'] * len(ids)),
          'token_id': np.array(seq, np.int64),
          'token_text': np.array([json.dumps(token_text(i), ensure_ascii=False) for i in seq],
                                 dtype=object),
          'seen': seen, 'repeated': repeated, 'repeated_fraction': frac, 'p_greedy': p}
