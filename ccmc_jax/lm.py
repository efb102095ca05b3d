"""Training a GPT-2-architecture language model in JAX + optax (no flax, no PyTorch).

One transformer implementation: the parameters have exactly the layout of
:class:`ccmc_jax.gpt2.GPT2` (``wte``, ``wpe``, ``ln_f_g``, ``ln_f_b`` and a list of per-layer
``blocks``; lm_head tied to ``wte``) and the loss is computed with :func:`ccmc_jax.gpt2.forward`,
vmapped over a batch. A trained model is saved as a local Hugging Face GPT-2 folder
(config.json, model.safetensors, and the suite's word vocabulary as vocab.json with a word-level
tokenizer_config.json) that :func:`ccmc_jax.gpt2.load_gpt2` reads like any other folder.

  config = gpt2.GPT2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=V, n_positions=64)
  params = init_params(jax.random.PRNGKey(0), config)
  opt = optimizer(lr=3e-3, steps=1000, warmup=100)
  step = make_train_step(config, opt, ids, window_starts(train_blocks, 65), batch=32)
  params, opt_state, loss = step(params, opt.init(params), jax.random.fold_in(data_key, 0))

The optimizer is nanoGPT's (Karpathy, 2022): AdamW with betas (0.9, 0.95), weight decay 0.1 on
the matrices and embeddings only, gradients clipped to global norm 1, learning rate warmed up
linearly then decayed by a half cosine to lr / 10. Batches are windows of ``context + 1``
tokens drawn uniformly inside the training blocks from ``fold_in(data_key, step)``: the step is
the whole data-order state, so a resumed run draws the batches an uninterrupted one would.

References: Radford et al. (2019), GPT-2; Loshchilov & Hutter (2019), AdamW; the paper
(Ildiz et al. 2024) Sec. 4 and Fig. 5 (left): a trained transformer's greedy output repeats.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ccmc_jax import gpt2
from ccmc_jax import io

INIT_STD = 0.02        # GPT-2 / nanoGPT: every weight matrix and embedding ~ N(0, 0.02^2)
MODEL_FILES = ('config.json', 'model.safetensors', 'vocab.json', 'tokenizer_config.json')
OPTIMIZER_FILE = 'optimizer.safetensors'  # AdamW moments (training state, not the model)
STATE_FILE = 'training.json'              # step, flags, code digest, history, file digests


class CheckpointError(io.UserError):
  """A model folder that cannot be resumed or reused: one line naming the file."""


# ------------------------------------------------------------------------------------------
# Parameters, loss, optimizer
# ------------------------------------------------------------------------------------------

def init_params(key, config: gpt2.GPT2Config) -> dict:
  """GPT-2's initialisation in the :class:`ccmc_jax.gpt2.GPT2` layout: weight matrices and
  embeddings ~ N(0, 0.02^2), the two residual output projections (``attn_proj_w``,
  ``mlp_proj_w``) ~ N(0, (0.02 / sqrt(2 n_layer))^2), biases 0, layer-norm gains 1.

  Args:
    key: PRNG key; the tensor with index i in the layout's order uses ``fold_in(key, i)``.
    config: the architecture (``gpt2.param_shapes`` gives every shape).
  Returns:
    dict of float32 jax arrays (``blocks``: a list of per-layer dicts).
  References: Radford et al. (2019) Sec. 2.3 (residual projections scaled by 1/sqrt(N)).
  """
  if not isinstance(config, gpt2.GPT2Config):
    raise ValueError(f'config must be a gpt2.GPT2Config, got {type(config).__name__}')
  shapes = gpt2.param_shapes(config)
  resid_std = INIT_STD / math.sqrt(2 * config.n_layer)
  counter = iter(range(10 ** 6))

  def tensor(name, shape):
    k = jax.random.fold_in(key, next(counter))
    if name.endswith('_b'):
      return jnp.zeros(shape, jnp.float32)
    if name.startswith('ln_'):  # ln_*_g
      return jnp.ones(shape, jnp.float32)
    std = resid_std if name in ('attn_proj_w', 'mlp_proj_w') else INIT_STD
    return std * jax.random.normal(k, shape, jnp.float32)

  params = {name: tensor(name, shape) for name, shape in shapes.items() if name != 'blocks'}
  params['blocks'] = [{name: tensor(name, shape) for name, shape in block.items()}
                      for block in shapes['blocks']]
  return params


def logits(params, config: gpt2.GPT2Config, ids_BxT):
  """(B, T, vocab) logits: :func:`ccmc_jax.gpt2.forward` vmapped over the batch (``params``
  numpy or jax arrays: a loaded :class:`ccmc_jax.gpt2.GPT2`'s work as they are)."""
  params = jax.tree_util.tree_map(jnp.asarray, params)
  return jax.vmap(lambda ids: gpt2.forward(params, config, ids))(ids_BxT)


def token_nll(params, config: gpt2.GPT2Config, tokens_BxT1):
  """(B, T) negative log-likelihood (nats) of ``tokens[:, 1:]`` given the tokens before them
  (``tokens`` (B, T + 1) int32, T <= n_positions)."""
  logp = jax.nn.log_softmax(logits(params, config, tokens_BxT1[:, :-1]), axis=-1)
  return -jnp.take_along_axis(logp, tokens_BxT1[:, 1:, None], axis=-1)[..., 0]


def loss(params, config: gpt2.GPT2Config, tokens_BxT1):
  """Mean next-token cross-entropy (nats per token) of a batch of windows."""
  return token_nll(params, config, tokens_BxT1).mean()


def lr_schedule(lr: float, steps: int, warmup: int, min_lr: float):
  """nanoGPT's ``get_lr``: ``lr (s + 1) / (warmup + 1)`` for ``s < warmup``, then a half cosine
  from ``lr`` to ``min_lr`` at ``s = steps`` (``min_lr`` after). A function of the (traced)
  step count."""
  def schedule(s):
    s = jnp.asarray(s, jnp.float32)
    ratio = jnp.clip((s - warmup) / max(steps - warmup, 1), 0.0, 1.0)
    cosine = min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (lr - min_lr)
    return jnp.where(s < warmup, lr * (s + 1) / (warmup + 1), cosine)
  return schedule


def decay_mask(params):
  """Weight decay on the matrices and embeddings (ndim >= 2), not on biases and gains."""
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def optimizer(lr: float, steps: int, warmup: int, min_lr=None, weight_decay=0.1, b1=0.9,
              b2=0.95, clip=1.0) -> optax.GradientTransformation:
  """nanoGPT's optimizer: gradient clipping to global norm ``clip``, then AdamW (eps 1e-8)
  with :func:`lr_schedule` (``min_lr`` default ``lr / 10``) and decoupled weight decay on the
  :func:`decay_mask` parameters.

  References: Loshchilov & Hutter (2019), decoupled weight decay (AdamW).
  """
  for name, v in (('lr', lr), ('weight_decay', weight_decay), ('clip', clip)):
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
      raise ValueError(f'{name}={v!r} must be a finite number >= 0')
  if not (isinstance(steps, int) and steps >= 1 and isinstance(warmup, int) and warmup >= 0):
    raise ValueError(f'steps={steps!r} must be an integer >= 1 and warmup={warmup!r} >= 0')
  min_lr = lr / 10 if min_lr is None else min_lr
  return optax.chain(
      optax.clip_by_global_norm(clip),
      optax.adamw(lr_schedule(lr, steps, warmup, min_lr), b1=b1, b2=b2, eps=1e-8,
                  weight_decay=weight_decay, mask=decay_mask))


# ------------------------------------------------------------------------------------------
# Data: training windows and validation chunks
# ------------------------------------------------------------------------------------------

def window_starts(blocks: Sequence, length: int) -> np.ndarray:
  """Start of every window of ``length`` tokens lying inside one of ``blocks`` ((start, end)
  pairs), int32; ValueError (naming ``length``) when no block is that long."""
  starts = [np.arange(s, e - length + 1) for s, e in blocks if e - s >= length]
  if not starts:
    raise ValueError(f'length={length}: no block holds a window of {length} tokens')
  return np.concatenate(starts).astype(np.int32)


def sample_windows(key, ids, starts, batch: int, length: int):
  """(batch, length) int32 windows ``ids[s:s + length]``, ``s`` uniform over ``starts``."""
  s = starts[jax.random.randint(key, (batch,), 0, starts.shape[0])]
  return ids[s[:, None] + jnp.arange(length)]


def make_train_step(config: gpt2.GPT2Config, opt, ids, starts, batch: int):
  """One jitted training step ``(params, opt_state, key) -> (params, opt_state, loss)``: draw
  ``batch`` windows of ``n_positions + 1`` tokens from ``key`` (:func:`sample_windows`), take
  the gradient of :func:`loss`, apply ``opt``. ``loss`` is the batch's loss before the update.
  ``ids`` and ``starts`` are closed over (on the device once)."""
  ids, starts = jnp.asarray(ids, jnp.int32), jnp.asarray(starts, jnp.int32)
  length = config.n_positions + 1

  def step(params, opt_state, key):
    tokens = sample_windows(key, ids, starts, batch, length)
    value, grads = jax.value_and_grad(loss)(params, config, tokens)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return jax.jit(step)


def eval_chunks(ids, blocks: Sequence, context: int):
  """Cut each block into chunks of ``context + 1`` tokens overlapping by one, so that every
  token of a block but its first is predicted exactly once from up to ``context`` tokens
  before it (the pairs that :func:`ccmc_jax.text.bigram_nll` scores).

  Returns:
    tokens (n, context + 1) int32 (short last chunks padded with 0) and weights (n, context)
    float32 (1 for a real target, 0 for padding).
  """
  ids = np.asarray(ids, np.int32)
  rows, weights = [], []
  for s, e in blocks:
    for c in range(s, e - 1, context):
      chunk = ids[c:min(c + context + 1, e)]
      row = np.zeros(context + 1, np.int32)
      row[:len(chunk)] = chunk
      w = np.zeros(context, np.float32)
      w[:len(chunk) - 1] = 1
      rows.append(row)
      weights.append(w)
  if not rows:
    return np.zeros((0, context + 1), np.int32), np.zeros((0, context), np.float32)
  return np.stack(rows), np.stack(weights)


@functools.lru_cache(maxsize=None)
def _nll_sums(config: gpt2.GPT2Config):
  return jax.jit(lambda params, tokens, w: (token_nll(params, config, tokens) * w).sum(1))


def mean_nll(params, config: gpt2.GPT2Config, tokens, weights, batch: int = 64) -> float:
  """Mean NLL per token (nats) over the weighted targets of :func:`eval_chunks`, in batches of
  ``batch`` chunks (one compilation: the last batch is padded with zero weights); the sum is
  taken in float64."""
  n = tokens.shape[0]
  if n == 0 or not weights.sum():
    return float('nan')
  pad = -n % batch
  tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)])
  weights = np.concatenate([weights, np.zeros((pad, weights.shape[1]), np.float32)])
  f = _nll_sums(config)
  total = sum(float(np.asarray(f(params, tokens[i:i + batch], weights[i:i + batch]),
                               np.float64).sum()) for i in range(0, len(tokens), batch))
  return total / float(weights.sum(dtype=np.float64))


# ------------------------------------------------------------------------------------------
# Checkpoints: a Hugging Face GPT-2 folder plus the training state
# ------------------------------------------------------------------------------------------

def _leaves(tree):
  """(name, leaf) pairs of a pytree, names from the key paths (stable across runs)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def _bytes_digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def folder_files(config: gpt2.GPT2Config, params, vocab: Sequence[str], opt_state,
                 state: dict) -> dict:
  """The bytes of every file of a checkpoint folder: the model (config.json,
  model.safetensors, vocab.json word -> id, tokenizer_config.json marking it word-level), the
  AdamW state (``optimizer.safetensors``: the float leaves of ``opt_state``) and
  ``training.json`` (``state`` plus the integer leaves of ``opt_state`` and the sha256 of the
  two weight files). The same arguments always give the same bytes."""
  if len(vocab) != config.vocab_size:
    raise ValueError(f'vocab has {len(vocab)} words but vocab_size={config.vocab_size}')
  dump = lambda obj: (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
                      + '\n').encode('utf-8')
  files = {
      'config.json': dump(gpt2.config_dict(config)),
      'model.safetensors': gpt2.safetensors_bytes(gpt2.params_to_tensors(params, config),
                                                  {'format': 'pt'}),
      'vocab.json': dump({w: i for i, w in enumerate(vocab)}),
      'tokenizer_config.json': dump(gpt2.word_tokenizer_config(config.vocab_size,
                                                               config.n_positions)),
  }
  floats, ints = {}, {}
  for name, leaf in _leaves(opt_state):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating):
      floats[name] = a.astype(np.float32)
    else:
      ints[name] = a.tolist()
  files[OPTIMIZER_FILE] = gpt2.safetensors_bytes(floats)
  record = dict(state, optimizer_counts=ints,
                digests={f: _bytes_digest(files[f]) for f in ('model.safetensors',
                                                              OPTIMIZER_FILE)})
  files[STATE_FILE] = dump(record)
  return files


def save_folder(model_dir, files: dict):
  """Write the files of :func:`folder_files` atomically: every file staged first (a failure
  writes none), then renamed, ``training.json`` last, so it never names weights that are not
  on disk (a kill between two renames is caught by its digests)."""
  staged = []
  try:
    for name in sorted(files, key=lambda f: f == STATE_FILE):
      staged.append((io.stage(os.path.join(model_dir, name),
                              lambda f, data=files[name]: f.write(data), 'wb'),
                     os.path.join(model_dir, name)))
    while staged:
      io.replace(*staged[0])
      staged.pop(0)
  finally:
    for tmp, _ in staged:
      if os.path.exists(tmp):
        os.unlink(tmp)


class Checkpoint(NamedTuple):
  model: gpt2.GPT2       # the loaded folder (gpt2.load_gpt2)
  opt_leaves: dict       # leaf name -> array of the AdamW state
  state: dict            # training.json


def read_state(model_dir) -> dict:
  """``training.json`` of a checkpoint folder (CheckpointError, one line, when missing or not
  a JSON object)."""
  path = os.path.join(model_dir, STATE_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f'{path} does not exist (no checkpoint to resume from)')
  try:
    with open(path, 'rb') as f:
      state = json.loads(f.read().decode('utf-8'))
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f'{path} is not readable JSON ({type(e).__name__}): truncated or '
                          'corrupt') from None
  if not isinstance(state, dict) or not isinstance(state.get('digests'), dict):
    raise CheckpointError(f'{path} is not a training state of this suite (no digests)')
  return state


def check_digests(model_dir, state: dict, names=('model.safetensors', OPTIMIZER_FILE)):
  """Each named file's sha256 equals the one ``training.json`` recorded (CheckpointError, one
  line naming the file, otherwise: changed, truncated or corrupt)."""
  for name in names:
    path = os.path.join(model_dir, name)
    digest = io.file_digest(path)
    if digest is None:
      raise CheckpointError(f'{path} does not exist')
    if digest != state['digests'].get(name):
      raise CheckpointError(f'{path} is not the file {STATE_FILE} recorded (sha256 differs: '
                            'changed, truncated or corrupt)')


def load_checkpoint(model_dir, opt_template) -> Checkpoint:
  """A checkpoint folder written by :func:`save_folder`, checked: both weight files match
  their recorded digests, the model loads with :func:`ccmc_jax.gpt2.load_gpt2` (its own
  config / weight checks), and the AdamW leaves have the names and shapes of
  ``opt_template`` (``optimizer(...).init(params)``). One-line errors naming the file."""
  state = read_state(model_dir)
  check_digests(model_dir, state)
  model = gpt2.load_gpt2(model_dir)
  path = os.path.join(model_dir, OPTIMIZER_FILE)
  try:
    floats = gpt2.read_safetensors(path, model_dir=model_dir)
  except gpt2.GPT2Error as e:
    raise CheckpointError(f'{path}: {e}') from None
  ints = state.get('optimizer_counts', {})
  leaves = {}
  for name, leaf in _leaves(opt_template):
    value = floats.get(name, ints.get(name))
    if value is None or np.shape(value) != np.shape(leaf):
      raise CheckpointError(f'{path} does not hold the optimizer state {name} of shape '
                            f'{list(np.shape(leaf))} (made by another model or version)')
    leaves[name] = np.asarray(value, np.asarray(leaf).dtype)
  return Checkpoint(model, leaves, state)


def restore_opt_state(opt_template, leaves: dict):
  """``opt_template`` with every leaf replaced by ``leaves[name]`` (from a checkpoint)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(opt_template)
  return jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(leaves[jax.tree_util.keystr(p)]) for p, _ in flat])
