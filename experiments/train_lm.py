"""Train a GPT-2-architecture word-level language model here (issue 20; the model of Fig. 5 left).

A GPT-2 decoder (ccmc_jax.lm: gpt2's forward pass, GPT-2 init, nanoGPT's AdamW with warm-up,
cosine decay and clipping) trained on the training blocks of the real-text split (same corpus,
seed, K and vocabulary as experiments.real_text: token id k = word k, <unk> = K). Outputs: the
model folder --model_dir (default results/train_lm/: config.json, model.safetensors, vocab.json,
tokenizer_config.json, read by ccmc_jax.gpt2.load_gpt2; optimizer.safetensors and training.json
for --resume), results/train_lm.csv (step, train_loss, validation_nll per token, the bigram
chain's and unigram's validation NLL, lr, tokens_per_s, elapsed_s), figures/train_lm.{png,pdf}.

  python -m experiments.train_lm --steps=1000 --batch=32 --lr=0.003   # the defaults: KJV, K=2000
  python -m experiments.train_lm --quick              # python_docs, a tiny model, seconds
  python -m experiments.train_lm --resume             # continue an interrupted run
"""
from __future__ import annotations

import math
import os

from absl import flags
import pandas as pd

from ccmc_jax import lm
from ccmc_jax import text
from ccmc_jax.trials import train_lm
from experiments import common
from experiments import real_text as rt
from experiments.plots import train_lm as plots

flags.adopt_module_key_flags(common)
for _name in ('corpus', 'corpus_file', 'K'):  # real_text's flags: the same split and vocabulary
  flags.declare_key_flag(_name)

_CONTEXT = flags.DEFINE_integer('context', 64, 'Context (n_positions, block_size), [2, 1024].')
_LAYERS = flags.DEFINE_integer('layers', 2, 'Transformer blocks (n_layer), in [1, 48].')
_HEADS = flags.DEFINE_integer('heads', 4, 'Attention heads (n_head), dividing --d_model.')
_D = flags.DEFINE_integer('d_model', 128, 'Model width (n_embd), in [2, 4096].')
_STEPS = flags.DEFINE_integer('steps', 1000, 'Training steps (max_iters), in [1, 10^6].')
_BATCH = flags.DEFINE_integer('batch', 32, 'Windows per step (batch_size), in [1, 4096].')
_LR = flags.DEFINE_float('lr', 3e-3, 'Peak AdamW learning rate, in (0, 1].')
_WARMUP = flags.DEFINE_integer('warmup', 100, 'Linear warm-up steps (warmup_iters), < --steps.')
_WD = flags.DEFINE_float('weight_decay', 0.1, 'AdamW weight decay of the matrices, in [0, 10].')
_CLIP = flags.DEFINE_float('grad_clip', 1.0, 'Gradient clipping (global norm), in (0, 100].')
_EVAL = flags.DEFINE_integer('eval_interval', 100, 'Steps between validation evaluations and '
                             'checkpoints, >= 1.')
_DIR = flags.DEFINE_string('model_dir', '', 'Model folder (default: <results_dir>/train_lm).')
_REUSE = flags.DEFINE_bool('reuse', False, 'Keep a complete model folder made by the same '
                           'flags and code (its training.json) instead of training again.')

NAME = 'train_lm'
FLAG_NAMES = ['corpus', 'corpus_file', 'K', 'context', 'layers', 'heads', 'd_model', 'steps',
              'batch', 'lr', 'warmup', 'weight_decay', 'grad_clip', 'eval_interval']
QUICK = {'corpus': 'python_docs', 'K': 200, 'context': 32, 'layers': 1, 'heads': 2,
         'd_model': 32, 'steps': 30, 'batch': 8, 'warmup': 5, 'eval_interval': 10}
SUMMARY = {}


def model_dir():
  return os.path.expanduser(_DIR.value) or os.path.join(flags.FLAGS.results_dir, NAME)


def hyper():  # the training hyper-parameters of the flags
  return train_lm.Hyper(_STEPS.value, _BATCH.value, _LR.value, _WARMUP.value, _EVAL.value,
                        _WD.value, _CLIP.value)


def config(V):
  return train_lm.model_config(V, _LAYERS.value, _HEADS.value, _D.value, _CONTEXT.value)


def validate():
  """One-line errors before any work; returns (data, baselines, checkpoint, state to reuse)."""
  common.check_int('K', rt._K.value, 2, 20000)  # pylint: disable=protected-access
  for name, flag, lo, hi in (('context', _CONTEXT, 2, 1024), ('layers', _LAYERS, 1, 48),
                             ('d_model', _D, 2, 4096), ('steps', _STEPS, 1, 10 ** 6),
                             ('batch', _BATCH, 1, 4096), ('eval_interval', _EVAL, 1, None),
                             ('heads', _HEADS, 1, max(_D.value, 1))):
    common.check_int(name, flag.value, lo, hi)
  if _D.value % _HEADS.value:
    raise common.FlagError(f'--heads={_HEADS.value} is invalid: allowed values divide '
                           f'--d_model={_D.value}')
  common.check_int('warmup', _WARMUP.value, 0, _STEPS.value - 1)
  common.check_float('lr', _LR.value, 0, 1, lo_open=True)
  common.check_float('weight_decay', _WD.value, 0, 10)
  common.check_float('grad_clip', _CLIP.value, 0, 100, lo_open=True)
  for name, path in (('results_dir', flags.FLAGS.results_dir), ('model_dir', model_dir()),
                     ('figures_dir', flags.FLAGS.figures_dir)):
    common.check_writable_dir(name, path)
  try:
    if rt._FILE.value is not None:  # pylint: disable=protected-access
      corpus = text.read_text_file(rt._FILE.value)  # pylint: disable=protected-access
    else:
      corpus = text.read_kjv() if rt._CORPUS.value == 'kjv' else text.read_python_docs()  # pylint: disable=protected-access
    data = train_lm.prepare(corpus, rt._K.value, flags.FLAGS.seed, _CONTEXT.value)  # pylint: disable=protected-access
  except text.TextError as e:
    raise common.FlagError(common.corpus_error(e)) from None
  ckpt = state = None
  if flags.FLAGS.resume or _REUSE.value:
    ckpt, state, why = train_lm.find_checkpoint(model_dir(), common.flag_values(FLAG_NAMES),
                                                common.NEUTRAL_FLAGS, config(len(data.vocab)),
                                                hyper(), flags.FLAGS.resume)
    if why and flags.FLAGS.resume:
      raise common.FlagError(f'--resume: {why}; rerun without --resume')
    if why:
      common.progress(f'{NAME}: --reuse: {why.split(" (")[0]}: training')
  return data, train_lm.baselines(data), ckpt, state


def run(checked, results):
  data, base, ckpt, reuse = checked
  table, folder = results[NAME], model_dir()
  if reuse is not None:  # the same flags and code made it: the CSV again from its history
    table.add(pd.DataFrame(reuse['history'], columns=train_lm.COLUMNS))
    SUMMARY.update(reuse['summary'], model_dir=folder, reused=True)
    common.progress(f'{NAME}: reused {folder} (same flags and code)')
    return
  c = config(len(data.vocab))
  prompt, = train_lm.heldout_prompt(data, c.n_positions // 4)
  state = {'flags': table.flags, 'code': train_lm.code_digest(), 'status': 'partial',
           'repetition_prompt_ids': prompt, 'repetition_steps': c.n_positions - len(prompt)}
  last = {}

  def save(extra):
    files = lm.folder_files(last['config'], last['params'], data.vocab, last['opt_state'],
                            dict(state, **extra))
    with common.uninterrupted():
      lm.save_folder(folder, files)
      table.add(pd.DataFrame(last['history'], columns=train_lm.COLUMNS))

  def on_eval(row, history, config, params, opt_state):
    last.update(config=config, params=params, opt_state=opt_state, history=history)
    save({'step': row['step'], 'history': history})

  history = train_lm.train(data, c, hyper(), flags.FLAGS.seed, base, ckpt, on_eval,
                           lambda msg: common.progress(f'{NAME}: {msg}'))
  SUMMARY.update(train_lm.summary(data, c, hyper(), base, history, last['params']))
  save({'step': history[-1]['step'], 'history': history, 'status': 'complete',
        'summary': dict(SUMMARY)})
  SUMMARY.update(model_dir=folder, reused=False)


SPEC = common.Spec(
    name=NAME, tables=[common.Table(NAME, ['step'], lambda frame: dict(SUMMARY), resume=False)],
    flag_names=FLAG_NAMES, validate=validate, run=run, plot=plots.plot,
    check=lambda s: None if math.isfinite(s.get('validation_nll', math.nan)) else 'NLL is NaN',
    message=lambda s: (f'validation NLL {s["validation_nll"]:.4f} per token (bigram chain '
                       f'{s["bigram_validation_nll"]:.4f}); held-out {s["heldout_nll"]:.4f}'))

if __name__ == '__main__':
  common.run(SPEC, quick=QUICK)
