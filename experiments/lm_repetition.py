"""A trained LM beside the CCMC on real text: repetition side by side, and how much of the LM's
copying a 1-layer attention captures (issue 20; paper Sec. 4, Fig. 5 left).

The LM (--hf_model_dir: a GPT-2-style folder trained on this corpus with the suite's vocabulary,
``python -m experiments.train_lm``) and the sources of experiments.real_text continue the same
held-out prompts (same corpus, K, L, seed) for the same T tokens: lm_greedy, lm_sample
(temperature 1), lm_sample_t0.7, ccmc (growing context), ccmc_window, bigram, corpus. Beyond its
context the LM sees a sliding window of its last n_positions tokens (absolute positions restart
at 0 in every window). Metrics: seq-rep-4, distinct-n, top-1/top-5 share, the running top-1
share. Likelihoods: held-out NLL per token of the LM vs the bigram chain; on held-out copy
events the LM, the LM renormalised on the prompt's tokens, and the fitted CCMC.

Outputs: results/lm_repetition.csv (source, prompt, metrics, sample text),
results/lm_repetition_curves.csv (running top-1 share), results/lm_repetition_nll.csv
(events, model, nll, count, copy_mass), figures/lm_repetition.{png,pdf}.

  python -m experiments.lm_repetition                     # results/train_lm, KJV, K=2000
  python -m experiments.lm_repetition --quick             # python_docs, K from the folder
"""
from __future__ import annotations

import os

from absl import flags

from ccmc_jax import gpt2
from ccmc_jax import memory
from experiments import common

flags.adopt_module_key_flags(common)

_HF_DIR = flags.DEFINE_string('hf_model_dir', None, 'The LM: a local GPT-2-style folder trained '
                              'on this corpus and vocabulary (python -m experiments.train_lm); '
                              'default <results_dir>/train_lm. Nothing is downloaded.')
_CORPUS = flags.DEFINE_enum('corpus', 'kjv', ['kjv', 'python_docs'],
                            'Built-in corpus the LM was trained on (as experiments.real_text).')
_FILE = flags.DEFINE_string('corpus_file', None, 'A UTF-8 text file to use instead of --corpus.')
_K = flags.DEFINE_integer('K', 2000, 'Vocabulary: the K most frequent training tokens + <unk>; '
                          'the LM\'s vocab_size must be K + 1. In [2, 20000].')
_L = flags.DEFINE_integer('L', 64, 'Prompt length L (real_text\'s), in [2, 4096].')
_T = flags.DEFINE_integer('T', 256, 'Tokens generated after each prompt by every source, in '
                          '[10, 100000].')
_PROMPTS = flags.DEFINE_integer('prompts', 100, 'Held-out prompts (real_text\'s), >= 1.')
_COPY = flags.DEFINE_integer('copy_events', 2000, 'Held-out copy events (spread over the '
                             'held-out blocks) on which the LM and the CCMC are compared, >= 1.')
_RIDGE = flags.DEFINE_list('ridge', ['1e-7', '1e-6', '1e-5', '1e-4'],
                           'Ridge grid of the CCMC\'s MLE, chosen on validation. Each > 0.')
_SMOOTH = flags.DEFINE_list('smoothing', ['0.001', '0.01', '0.1', '1', '10'],
                            'Additive-smoothing grid of the bigram chain. Each > 0.')

NAME = 'lm_repetition'
FLAG_NAMES = ['hf_model_dir', 'corpus', 'corpus_file', 'K', 'L', 'T', 'prompts',
              'copy_events', 'ridge', 'smoothing']
KEYS = {'lm_repetition': ['source', 'prompt'], 'lm_repetition_curves': ['source', 't'],
        'lm_repetition_nll': ['events', 'model']}
QUICK = {'corpus': 'python_docs', 'L': 32, 'T': 40, 'prompts': 10, 'copy_events': 200,
         'ridge': ['1e-5', '1e-4'], 'smoothing': ['0.1', '1']}
_OUT = {}


def model_dir():
  """--hf_model_dir, default <results_dir>/train_lm."""
  return os.path.expanduser(_HF_DIR.value or os.path.join(flags.FLAGS.results_dir, 'train_lm'))


def apply_quick(extra=None):
  """--quick: python_docs, small settings, and K from the folder's vocab_size - 1 (the quick
  LM's vocabulary) unless --K is given."""
  common.apply_quick({**QUICK, **(extra or {})})
  if not flags.FLAGS['K'].present:
    try:
      flags.FLAGS['K'].value = gpt2.read_config(model_dir()).vocab_size - 1
    except gpt2.GPT2Error:
      pass  # validate names the folder


def prepared(prompt_Ts, prompts):
  """Flag checks shared with lm_distillation; returns ``real_text.prepare``'s Prepared (the
  corpus read, its vocabulary) after checking the LM folder against it (weights not read).
  Generation prompts are chosen for the first T of ``prompt_Ts`` that the held-out blocks fit."""
  from ccmc_jax import text  # pylint: disable=import-outside-toplevel
  from ccmc_jax.trials import lm_repetition as lm  # pylint: disable=import-outside-toplevel
  from ccmc_jax.trials import real_text  # pylint: disable=import-outside-toplevel
  common.check_int('K', _K.value, 2, 20000)
  common.check_int('L', _L.value, 2, 4096)
  common.check_float('ridge', _RIDGE.value, 0, None, lo_open=True)
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  source = f'--corpus_file={_FILE.value}' if _FILE.value else f'--corpus={_CORPUS.value}'
  try:
    config = gpt2.check_model_dir(model_dir())
    common.check_memory(memory.gpt2(model_dir(), gpt2.param_count(config)))
    corpus = lm.read_corpus(_CORPUS.value, _FILE.value)
    for i, prompt_T in enumerate(prompt_Ts):
      try:
        prep = real_text.prepare(corpus, _K.value, _L.value, prompt_T, prompts,
                                 flags.FLAGS.seed)
        break
      except text.TextError:
        if i == len(prompt_Ts) - 1:
          raise
    lm.check_model_folder(model_dir(), prep.vocab)
  except text.TextError as e:
    msg = str(e)
    if _FILE.value and msg.startswith(_FILE.value):
      msg = msg[len(_FILE.value) + 1:]
    raise common.FlagError(msg if msg.startswith('--') else f'{source} {msg}') from None
  except gpt2.GPT2Error as e:
    raise common.FlagError(f'--hf_model_dir{e.rest}' if e.arg == 'model_dir' else
                           f'--{e.arg}{e.rest}') from None
  return prep


def validate():
  """Every flag check before any work; returns real_text's Prepared."""
  from ccmc_jax.trials import lm_repetition as lm  # pylint: disable=import-outside-toplevel
  common.check_int('T', _T.value, 10, 100000)
  common.check_int('prompts', _PROMPTS.value, 1, 100000)
  common.check_int('copy_events', _COPY.value, 1, 1000000)
  common.check_float('smoothing', _SMOOTH.value, 0, None, lo_open=True)
  common.check_memory(memory.real_text(_K.value, _L.value, _T.value, _PROMPTS.value,
                                       len(_RIDGE.value) + len(_SMOOTH.value), 0, None))
  # real_text's prompts (chosen with its T = 1000) when the blocks allow, else with T
  return prepared((max(_T.value, lm.PROMPT_T), _T.value), _PROMPTS.value)


def run(prep, results):
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax.trials import lm_repetition as lm  # pylint: disable=import-outside-toplevel
  model = gpt2.load_gpt2(model_dir())
  out = lm.run(prep, model, L=_L.value, T=_T.value, ridges=[float(r) for r in _RIDGE.value],
               smoothing=[float(s) for s in _SMOOTH.value], seed=flags.FLAGS.seed,
               copy_events=_COPY.value, progress=lambda msg: common.progress(f'{NAME}: {msg}'))
  _OUT.update(out)
  corpus = 'file' if _FILE.value is not None else _CORPUS.value
  extra = {'corpus': corpus, 'K': _K.value, 'L': _L.value, 'T': _T.value}
  with results.unit():
    results['lm_repetition'].add(pd.DataFrame({**out['text'], **extra}))
    results['lm_repetition_curves'].add(pd.DataFrame({**out['curves'], **extra}))
    results['lm_repetition_nll'].add(pd.DataFrame({**out['nll'], **extra}))


def summary(_):
  return {'summary': _OUT['summary'], 'choices': _OUT['choices']}


def message(s):
  s = s['summary']
  rep = ', '.join(f'{k} {v:.3f}' for k, v in s['mean_seq_rep_4'].items())
  return (f'mean seq_rep_4 {rep}; lm_greedy/corpus {s["lm_greedy_over_corpus_seq_rep_4"]:.2f}x; '
          f'NLL per token lm {s["nll"]["all_tokens/lm"]:.3f} vs bigram '
          f'{s["nll"]["all_tokens/bigram_chain"]:.3f}')


def plot(*paths):
  from experiments.plots import lm_repetition as plots  # pylint: disable=import-outside-toplevel
  return plots.draw(*paths)


SPEC = common.Spec(
    name=NAME, tables=[common.Table(n, k, summary, resume=False) for n, k in KEYS.items()],
    flag_names=FLAG_NAMES, validate=validate, run=run, plot=plot, message=message)


if __name__ == '__main__':
  common.run(SPEC, quick=apply_quick)
