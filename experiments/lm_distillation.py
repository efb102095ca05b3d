"""Learning the CCMC from a language model's answers (the regime of the paper's Fig. 4, right:
query an LM with prompts, train a small model on its answers; issue 20, beyond the paper).

The LM (--hf_model_dir, as experiments.lm_repetition) is queried with n real prompts (contexts
of L tokens from the training blocks of experiments.real_text's split); its sampled next tokens
(temperature 1) that occur in their prompt (copy events) train the CCMC (fit_mle; ridge chosen
on LM answers to validation prompts), for each n of --n. The CCMC fitted to the real next
tokens of the same prompts is the comparison. On --heldout held-out prompts: the NLL per copy
event of fresh LM answers, the KL from the LM's renormalised copy law (its next-token law on the
prompt's tokens, renormalised) to the CCMC's, and the NLL of the real answers.

Outputs: results/lm_distillation.csv (source, n, n_copy, ridge, validation_nll, heldout_nll_lm,
kl_lm_copy, heldout_nll_text, floor_nll, ...), figures/lm_distillation.{png,pdf}.

  python -m experiments.lm_distillation                   # results/train_lm, KJV, K=2000
  python -m experiments.lm_distillation --quick
"""
from __future__ import annotations

from absl import flags

from experiments import common
from experiments import lm_repetition as base  # the LM folder, corpus, K, L and ridge flags

flags.adopt_module_key_flags(common)
flags.adopt_module_key_flags(base)

_N = flags.DEFINE_list('n', ['1000', '2000', '5000', '10000', '20000'],
                       'Training prompts queried (nested sets), each in [10, 10^6].')
_VAL = flags.DEFINE_integer('validation', 2000, 'Validation prompts queried (ridge choice), '
                            'in [10, 10^6].')
_HELD = flags.DEFINE_integer('heldout', 2000, 'Held-out prompts queried (the measurements), '
                             'in [10, 10^6].')

NAME = 'lm_distillation'
FLAG_NAMES = ['hf_model_dir', 'corpus', 'corpus_file', 'K', 'L', 'ridge', 'n', 'validation',
              'heldout']
NOT_OURS = ('T', 'prompts', 'copy_events', 'smoothing')  # lm_repetition's own flags
QUICK = {'n': ['100', '300'], 'validation': 200, 'heldout': 200}
_OUT = {}


def validate():
  """Every flag check before any work; returns real_text's Prepared."""
  for name in NOT_OURS:
    if flags.FLAGS[name].present:
      raise common.FlagError(f'--{name} is a flag of experiments.lm_repetition, not of '
                             f'{NAME}')
  common.check_int('n', _N.value, 10, 10**6)
  common.check_int('validation', _VAL.value, 10, 10**6)
  common.check_int('heldout', _HELD.value, 10, 10**6)
  prep = base.prepared((1,), 1)
  n_train = int(sum(max(e - s - flags.FLAGS.L, 0) for s, e in prep.split.blocks(0)))
  if max(int(n) for n in _N.value) > n_train:
    raise common.FlagError(f'--n={max(int(n) for n in _N.value)} is invalid: allowed values '
                           f'are integers in [10, {n_train}] (the training prompts of L = {flags.FLAGS.L})')
  return prep


def run(prep, results):
  from ccmc_jax import gpt2  # pylint: disable=import-outside-toplevel
  from ccmc_jax.trials import lm_distillation as dist  # pylint: disable=import-outside-toplevel
  model = gpt2.load_gpt2(base.model_dir())
  out = dist.run(prep, model, n_grid=[int(n) for n in _N.value],
                 ridges=[float(r) for r in flags.FLAGS.ridge], validation=_VAL.value,
                 heldout=_HELD.value, seed=flags.FLAGS.seed,
                 progress=lambda msg: common.progress(f'{NAME}: {msg}'))
  _OUT.update(out)
  corpus = 'file' if flags.FLAGS.corpus_file is not None else flags.FLAGS.corpus
  results[NAME].add({**out['rows'], 'corpus': corpus, 'K': flags.FLAGS.K, 'L': flags.FLAGS.L})


def message(s):
  s = s['summary']
  nll = s.get('lm_answers/heldout_nll_lm', [float('nan')] * 2)
  return (f'held-out NLL of LM answers, CCMC fitted to them: {nll[0]:.4f} -> {nll[1]:.4f} '
          f'(floor {s["floor_nll"]:.4f})')


def plot(path):
  from experiments.plots import lm_distillation as plots  # pylint: disable=import-outside-toplevel
  return plots.draw(path)


SPEC = common.Spec(
    name=NAME, tables=[common.Table(NAME, ['source', 'n'], lambda _: {'summary': _OUT['summary']},
                                    resume=False)],
    flag_names=FLAG_NAMES, validate=validate, run=run, plot=plot, message=message)


if __name__ == '__main__':
  common.run(SPEC, quick=lambda: base.apply_quick(QUICK))
