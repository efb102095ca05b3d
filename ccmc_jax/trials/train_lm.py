"""Training a GPT-2-architecture word-level language model on a corpus (issue 20; paper Sec. 4,
Fig. 5 left: the model whose greedy output collapses into repetition).

The text, split and vocabulary are exactly those of the real-text experiment
(:mod:`ccmc_jax.trials.real_text`): ``text.tokenize``, ``text.block_split(n, BLOCKS, seed,
0.1, 0.1)``, vocabulary = the ``K`` most frequent training tokens then ``<unk>`` (token id k =
index k, ``vocab_size = K + 1``). The model trains on windows of the training blocks
(:mod:`ccmc_jax.lm`) and is evaluated by its mean NLL per token on the validation blocks, next to
the smoothed bigram chain and the unigram on the same tokens. :func:`train` returns plain rows;
the caller writes the checkpoint and the CSV (through ``on_eval``).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import sys
import textwrap
import time
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
import optax

from ccmc_jax import gpt2
from ccmc_jax import lm
from ccmc_jax import text
from ccmc_jax.trials import real_text

SMOOTHING = (0.001, 0.01, 0.1, 1.0, 10.0)  # additive smoothing grid of the baselines
COLUMNS = ('step', 'train_loss', 'validation_nll', 'bigram_nll', 'unigram_nll', 'lr',
           'tokens_per_s', 'elapsed_s')


class Data(NamedTuple):
  vocab: list
  ids: np.ndarray       # the whole token stream, encoded (int32)
  split: text.Split


def prepare(corpus_text, K, seed, context) -> Data:
  """Tokens, split and vocabulary as :func:`ccmc_jax.trials.real_text.prepare` makes them.

  Raises text.TextError (message without a flag name) when the text is too small.
  """
  tokens = text.tokenize(corpus_text)
  blocks = real_text.BLOCKS
  if len(tokens) < blocks * 2:
    raise text.TextError(f'has only {len(tokens)} tokens, too few to split into {blocks} '
                         'blocks: too small')
  split = text.block_split(len(tokens), blocks, seed, real_text.VALIDATION, real_text.HELDOUT)
  train_tokens = [t for s, e in split.blocks(0) for t in tokens[s:e]]
  distinct = len(set(train_tokens) - {text.UNK})
  if distinct < K:
    raise text.TextError(f'has only {distinct} distinct tokens in its training blocks, fewer '
                         f'than --K={K}: too small')
  vocab = text.build_vocab(train_tokens, K)
  if max(e - s for s, e in split.blocks(0)) < context + 1:
    raise text.TextError(f'has training blocks shorter than --context + 1 = {context + 1} '
                         'tokens: too small')
  return Data(vocab, text.encode(tokens, vocab), split)


def unigram_nll(ids, train_blocks, eval_blocks, V, alpha) -> float:
  """Mean NLL per token (nats) on the tokens of ``eval_blocks`` but each block's first (the
  targets the LM and the bigram chain are scored on) of the add-``alpha`` unigram of the
  training blocks."""
  ids = np.asarray(ids, np.int64)
  counts = sum(np.bincount(ids[s:e], minlength=V) for s, e in train_blocks) + alpha
  logp = np.log(counts / counts.sum())
  targets = np.concatenate([ids[s + 1:e] for s, e in eval_blocks])
  return float(-logp[targets].mean())


def baselines(data: Data, smoothing=SMOOTHING) -> dict:
  """The bigram chain's and the unigram's NLL per token on the validation and held-out blocks,
  each with its additive smoothing chosen by validation NLL (as real_text chooses the bigram
  chain's)."""
  V, ids, split = len(data.vocab), data.ids, data.split
  train, val, held = (split.blocks(r) for r in range(3))
  C = text.bigram_counts(ids, train, V)
  bigram = {a: text.bigram_log_matrix(C, a) for a in smoothing}
  val_bi = {a: text.bigram_nll(bigram[a], ids, val) for a in smoothing}
  val_uni = {a: unigram_nll(ids, train, val, V, a) for a in smoothing}
  a_bi, a_uni = min(val_bi, key=val_bi.get), min(val_uni, key=val_uni.get)
  return {'bigram_validation_nll': val_bi[a_bi], 'unigram_validation_nll': val_uni[a_uni],
          'bigram_heldout_nll': text.bigram_nll(bigram[a_bi], ids, held),
          'unigram_heldout_nll': unigram_nll(ids, train, held, V, a_uni),
          'bigram_smoothing': a_bi, 'unigram_smoothing': a_uni}


def _code(obj) -> str:
  """The syntax tree of a module's or function's source without docstrings, comments and
  layout (``ast.dump``): what the code does, not how it is written up."""
  tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
  for node in ast.walk(tree):
    body = getattr(node, 'body', None)
    if (isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and body
        and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)):
      node.body = body[1:] or [ast.Pass()]
  return ast.dump(tree)


def code_digest() -> dict:
  """What determines a trained folder's bytes besides the flags: the code (syntax trees,
  :func:`_code`) of this module, of :mod:`ccmc_jax.lm`, of gpt2's forward pass and file
  writers and of the text functions that make the tokens and the baselines, plus the jax,
  jaxlib, optax and numpy versions (one sha256 of them all). Docstrings and comments do not
  enter, nor do the other functions of gpt2.py and text.py (decoding, metrics): editing them
  keeps a trained folder reusable. The machine is not part of it (round-off may differ across
  CPUs)."""
  import jaxlib  # pylint: disable=import-outside-toplevel
  parts = [_code(sys.modules[__name__]), _code(lm)]
  parts += [_code(f) for f in (
      gpt2._layer_norm, gpt2._gelu, gpt2._block, gpt2._unembed, gpt2.forward,  # pylint: disable=protected-access
      gpt2.safetensors_bytes, gpt2.params_to_tensors, gpt2.config_dict, gpt2.param_shapes,
      gpt2.word_tokenizer_config, text.tokenize, text.build_vocab, text.encode,
      text.block_split, text.bigram_counts, text.bigram_log_matrix, text.bigram_nll,
      text.prompt_positions)]
  parts.append(text._TOKEN.pattern)  # pylint: disable=protected-access
  parts.append(f'{real_text.BLOCKS} {real_text.VALIDATION} {real_text.HELDOUT}')
  versions = {'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'optax': optax.__version__,
              'numpy': np.__version__}
  parts.append(repr(sorted(versions.items())))
  digest = hashlib.sha256('\n\0\n'.join(parts).encode('utf-8')).hexdigest()
  return {'sha256': digest, **versions}


def heldout_prompt(data: Data, length, count=1):
  """Token ids of ``count`` prompts of ``length`` tokens from the held-out blocks (the first
  of real_text's evenly spread held-out positions), for the repetition panel."""
  pos = text.prompt_positions(data.split.blocks(2), length, 1, count)
  return [data.ids[p - length:p].tolist() for p in pos]


class Hyper(NamedTuple):
  steps: int
  batch: int
  lr: float
  warmup: int
  eval_interval: int
  weight_decay: float = 0.1
  grad_clip: float = 1.0


def train(data: Data, config: gpt2.GPT2Config, hp: Hyper, seed: int, base: dict,
          resume: Optional[lm.Checkpoint] = None,
          on_eval: Callable[[dict, list, gpt2.GPT2Config, dict, object], None] = None,
          progress: Callable[[str], None] = lambda msg: None, log_interval: int = 10) -> list:
  """Train from ``init_params(fold_in(PRNGKey(seed), 0))`` (or from ``resume``) for
  ``hp.steps`` steps; batch ``s`` from ``fold_in(fold_in(PRNGKey(seed), 1), s)``.

  Every ``hp.eval_interval`` steps (and at step 0 and the last step) the validation NLL per
  token is measured and a row (``COLUMNS``) appended; ``on_eval(row, history, config, params,
  opt_state)`` then runs (the caller checkpoints there). ``train_loss`` is the mean batch loss of
  the steps since the previous row (at step 0: the loss of the first batch at initialisation);
  ``tokens_per_s`` the training throughput over them (0 at step 0), evaluation excluded.

  Returns:
    the history: every row so far (a resumed run's included).
  """
  root = jax.random.PRNGKey(seed)
  data_key = jax.random.fold_in(root, 1)
  train_blocks, val_blocks = data.split.blocks(0), data.split.blocks(1)
  opt = lm.optimizer(hp.lr, hp.steps, hp.warmup, weight_decay=hp.weight_decay,
                     clip=hp.grad_clip)
  params = lm.init_params(jax.random.fold_in(root, 0), config)
  opt_state = opt.init(params)
  history, start_step, elapsed = [], 0, 0.0
  if resume is not None:
    params = jax.tree_util.tree_map(jax.numpy.asarray, resume.model.params)
    opt_state = lm.restore_opt_state(opt_state, resume.opt_leaves)
    history = [dict(r) for r in resume.state['history']]
    start_step = int(resume.state['step'])
    elapsed = float(history[-1]['elapsed_s']) if history else 0.0
  starts = lm.window_starts(train_blocks, config.n_positions + 1)
  step_fn = lm.make_train_step(config, opt, data.ids, starts, hp.batch)
  val_tokens, val_w = lm.eval_chunks(data.ids, val_blocks, config.n_positions)
  schedule = lm.lr_schedule(hp.lr, hp.steps, hp.warmup, hp.lr / 10)
  tokens_per_step = hp.batch * config.n_positions

  def record(step, train_loss, rate):
    row = {'step': step, 'train_loss': train_loss,
           'validation_nll': lm.mean_nll(params, config, val_tokens, val_w),
           'bigram_nll': base['bigram_validation_nll'],
           'unigram_nll': base['unigram_validation_nll'],
           'lr': float(schedule(max(step - 1, 0))), 'tokens_per_s': rate, 'elapsed_s': elapsed}
    history.append(row)
    if on_eval is not None:
      on_eval(row, history, config, params, opt_state)
    return row

  if start_step == 0 and not history:
    first = lm.sample_windows(jax.random.fold_in(data_key, 0), data.ids, starts, hp.batch,
                              config.n_positions + 1)
    row = record(0, float(lm.loss(params, config, first)), 0.0)
    progress(f'step 0: validation NLL {row["validation_nll"]:.4f} (bigram '
             f'{row["bigram_nll"]:.4f}, unigram {row["unigram_nll"]:.4f})')
  # Compiled before the clock starts: tokens_per_s is the training throughput, not XLA's.
  step_fn = step_fn.lower(params, opt_state, jax.random.fold_in(data_key, 0)).compile()
  losses, t0, done_since = [], time.perf_counter(), 0
  for s in range(start_step, hp.steps):
    params, opt_state, value = step_fn(params, opt_state, jax.random.fold_in(data_key, s))
    losses.append(value)
    done_since += 1
    if (s + 1) % log_interval == 0 or s + 1 == hp.steps or (s + 1) % hp.eval_interval == 0:
      jax.block_until_ready(params)
      now = time.perf_counter()
      rate = done_since * tokens_per_step / max(now - t0, 1e-9)
      left = (hp.steps - s - 1) * tokens_per_step / rate
      if (s + 1) % hp.eval_interval == 0 or s + 1 == hp.steps:
        train_loss = float(np.mean(np.asarray(jax.device_get(losses), np.float64)))
        elapsed += now - t0
        row = record(s + 1, train_loss, rate)
        progress(f'step {s + 1}/{hp.steps}: loss {train_loss:.4f}, validation NLL '
                 f'{row["validation_nll"]:.4f}, {rate:,.0f} tokens/s, {left / 60:.1f} min left')
        losses, t0, done_since = [], time.perf_counter(), 0
      else:
        progress(f'step {s + 1}/{hp.steps}: loss {float(losses[-1]):.4f}, {rate:,.0f} '
                 f'tokens/s, {left / 60:.1f} min left')
  return history


def saved_state(folder, flag_dict: dict, neutral=()) -> tuple:
  """``(training.json, why)`` of a checkpoint folder: ``why`` is None when it was made by the
  same flags (``neutral`` ones ignored) and the same code (:func:`code_digest`), else the reason
  in words. Raises lm.CheckpointError (one line naming the file) when it is unreadable."""
  state = lm.read_state(folder)
  then = {k: v for k, v in (state.get('flags') or {}).items() if k not in neutral}
  now = {k: v for k, v in flag_dict.items() if k not in neutral}
  if then != now:
    changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
    return state, f'was made with other flags ({", ".join(changed)})'
  if state.get('code') != code_digest():
    return state, 'was made by other code (the code digest in training.json differs)'
  return state, None


def model_config(V, layers, heads, d_model, context) -> gpt2.GPT2Config:
  """The GPT-2 architecture of the flags (vocab_size = V = K + 1, n_positions = context)."""
  return gpt2.GPT2Config(n_layer=layers, n_head=heads, n_embd=d_model, vocab_size=V,
                         n_positions=context)


def load_for_resume(folder, config: gpt2.GPT2Config, hp: Hyper) -> lm.Checkpoint:
  """The checkpoint to resume (lm.CheckpointError, one line naming the file, when its weights
  or optimizer state are not those of ``config`` and ``hp``, or are corrupt)."""
  opt = lm.optimizer(hp.lr, hp.steps, hp.warmup, weight_decay=hp.weight_decay,
                     clip=hp.grad_clip)
  saved = gpt2.read_config(folder)
  if saved != config:
    raise lm.CheckpointError(f'{folder}/config.json does not describe the model of these '
                             f'flags ({saved} != {config})')
  return lm.load_checkpoint(folder, opt.init(lm.init_params(jax.random.PRNGKey(0), config)))


def heldout_nll(params, config: gpt2.GPT2Config, data: Data) -> float:
  """The LM's mean NLL per token on the held-out blocks."""
  tokens, w = lm.eval_chunks(data.ids, data.split.blocks(2), config.n_positions)
  return lm.mean_nll(params, config, tokens, w)


def find_checkpoint(folder, flag_dict: dict, neutral, config: gpt2.GPT2Config, hp: Hyper,
                    resume: bool) -> tuple:
  """What the model folder offers a run of these flags: ``(checkpoint, state, why)``.

  A complete folder of the same flags and code (:func:`saved_state`) whose weights are the
  recorded ones gives its training.json as ``state`` (reuse it); a partial one, with ``resume``,
  the loaded checkpoint; anything else ``why``, one line naming the flags or file (a missing,
  truncated or corrupt file, other flags, other code, a partial run without ``resume``).
  """
  try:
    state, why = saved_state(folder, flag_dict, neutral)
    if why is None and state.get('status') == 'complete':
      lm.check_digests(folder, state, ('model.safetensors',))
      return None, state, None
    if why is None and resume:
      return load_for_resume(folder, config, hp), None, None
    return None, None, f'{folder} {why or "is a partial run"}'
  except (lm.CheckpointError, gpt2.GPT2Error) as e:
    return None, None, str(e)


def summary(data: Data, config: gpt2.GPT2Config, hp: Hyper, base: dict, history: list,
            params) -> dict:
  """The numbers of a finished training for its sidecar: the baselines, the final validation
  NLL, the held-out NLL per token of the LM, size and time."""
  final = history[-1]
  out = dict(base, validation_nll=final['validation_nll'],
             heldout_nll=heldout_nll(params, config, data), parameters=gpt2.param_count(config),
             tokens_trained=hp.steps * hp.batch * config.n_positions,
             training_s=final['elapsed_s'])
  out['below_bigram'] = bool(out['validation_nll'] < base['bigram_validation_nll'])
  return out
