"""GPT-2 greedy decoding collapses into repetition (paper Sec. 4, Fig. 5 left), from a LOCAL
Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json, merges.txt): nothing is
downloaded, and without --hf_model_dir the script prints a one-line notice and exits 0.

GPT-2 greedily decodes --prompt (or --prompt_ids) for --steps tokens; each generated token is
marked repeated when the --ngram-gram ending at it occurred earlier in the text. Outputs:
results/gpt2_repetition.csv (one row per token: step, part, token_id, token_text, seen,
repeated, repeated_fraction, p_greedy) and figures/gpt2_repetition.{png,pdf}.

  python -m experiments.gpt2_repetition --hf_model_dir=~/models/gpt2 --steps=200
"""
from __future__ import annotations

import os

from absl import flags

from ccmc_jax import gpt2
from ccmc_jax import memory
from experiments import common
from experiments.plots import gpt2_repetition as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_HF_DIR = flags.DEFINE_string(
    'hf_model_dir', '', 'Local Hugging Face GPT-2 folder (config.json, model.safetensors, '
    'vocab.json, merges.txt); empty: print a notice and exit 0. Nothing is downloaded.')
_PROMPT = flags.DEFINE_string('prompt', 'The meaning of life is',
                              'Text prompt GPT-2 continues greedily.')
_PROMPT_IDS = flags.DEFINE_list('prompt_ids', [], 'The prompt as token ids instead (for '
                                'folders without vocab.json/merges.txt).')
_STEPS = flags.DEFINE_integer('steps', 200, 'Tokens GPT-2 generates, in [1, 1024] (prompt + steps <= '
                              'the model\'s n_positions).')
_NGRAM = flags.DEFINE_integer('ngram', 4, 'A generated token is a repetition when the n-gram '
                              'ending at it occurred earlier; n >= 1.')

NAME = 'gpt2_repetition'
FLAG_NAMES = ['hf_model_dir', 'prompt', 'prompt_ids', 'steps', 'ngram']
FLAG_OF = {'model_dir': 'hf_model_dir'}  # gpt2's argument names -> this script's flags


def model_dir():
  return os.path.expanduser(_HF_DIR.value)


def validate():
  """Every flag check before any work (no weights read); returns the prompt's token ids."""
  ids = gpt2.check_inputs(model_dir(), _PROMPT.value, _PROMPT_IDS.value, _STEPS.value,
                          _NGRAM.value)
  common.check_memory(memory.gpt2(_HF_DIR.value, gpt2.param_count(gpt2.read_config(model_dir()))))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return ids


_MODEL = {}  # what made the table, for its sidecar (the figure's title reads it)


def describe(model) -> str:
  """The model in words: the suite's word-level LM (experiments.train_lm) or a GPT-2."""
  c = model.config
  size = (f'{c.n_layer} layers, d = {c.n_embd}, context {c.n_positions}, '
          f'{gpt2.param_count(c) / 1e6:.2f} M parameters')
  if isinstance(model.tokenizer, gpt2.WordTokenizer):
    return f'a GPT-2-architecture word LM trained by this suite ({size})'
  return f'GPT-2 ({size})'


def run(prompt_ids, results):
  model = gpt2.load_gpt2(model_dir())
  _MODEL['model'] = describe(model)
  ids, p = gpt2.greedy_decode(model, prompt_ids, _STEPS.value)
  results[NAME].add(gpt2.repetition_table(prompt_ids, ids, model.token_text, p, _NGRAM.value))


def summary(frame):
  gen = frame[frame['part'] == 'generated']
  return {'model': _MODEL.get('model', ''), 'repeated_fraction': float(gen['repeated'].mean()),
          'loop_period_and_tail': list(gpt2.loop_period(gen['token_id'].tolist()))}


SPEC = common.Spec(
    name=NAME, tables=[common.Table(NAME, ['step'], summary, resume=False)],
    flag_names=FLAG_NAMES, validate=validate, run=run, plot=plots.plot,
    message=lambda s: f'{s["repeated_fraction"]:.0%} of the generated tokens repeat an n-gram')


def check_without_model():
  """The flag checks that need no model folder: a skipped run checks them too."""
  gpt2.check_arguments(_PROMPT_IDS.value, _STEPS.value, _NGRAM.value)
  for name in ('results_dir', 'figures_dir'):
    common.check_writable_dir(name, flags.FLAGS[name].value, create=False)


def entry(_):
  try:
    if not _HF_DIR.value and not flags.FLAGS.plot_only:
      check_without_model()  # a skipped run still refuses a bad flag
      common.progress(f'{NAME}: skipped: no --hf_model_dir (a local Hugging Face GPT-2 folder; '
                      'nothing is downloaded)')
      return
    common.main(SPEC)
  except gpt2.GPT2Error as e:  # name this script's flag, not the library's argument
    raise common.FlagError(f'--{FLAG_OF.get(e.arg, e.arg)}{e.rest}') from None


if __name__ == '__main__':
  common.run(entry, quick={'steps': 40})
