"""Training the attention layer itself (issue 19): optax on the paper's model vs the convex MLE.

On exactly the data of the sample-complexity experiment (same seed, K, L, n: same A*, prompts
and answers), fit the convex MLE (sample complexity's batched Newton) and train the 1-layer
attention layer (ccmc_jax.attention_layer): tied (C E^T = I_K, only W trained; Adam and L-BFGS
with optax's zoom line search) and untied (E, W, C trained, width --d; Adam), from --inits
random inits per trial, vmapped over trials x inits with n traced (one compilation per K and
model). Stop rule: ||gradient||_2 <= --gtol or --max_steps steps. Trials and training:
ccmc_jax.trials.attention_training; figure: experiments.plots.attention_training.

Outputs: results/attention_training.csv (one row per K, L, n, trial, model, init: train_nll
without the ridge, heldout_nll, heldout_nll_true of A*, error ||P_hat - P*||_F^2 (NaN for the
untied layer), steps, grad_norm), results/attention_training_curves.csv (objective per step of
trial 0), figures/attention_training.{png,pdf}.

  python -m experiments.attention_training --K=5,10,20 --n=1000,4642,21544 --trials=5 --inits=5
"""
from __future__ import annotations

from absl import flags

from ccmc_jax.trials import attention_training as trials
from experiments import common
from experiments.plots import attention_training as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_list('K', ['5', '10', '20'], 'Vocabulary sizes K (paper Sec. 2), in [2, 100].')
_L = flags.DEFINE_list('L', ['10'], 'Prompt lengths L (paper Sec. 2), in [1, 1000].')
_N = flags.DEFINE_list('n', ['1000', '4642', '21544'],
                       'Sample sizes n: IID (prompt, next token) pairs (Sec. 3), points of the '
                       'sample-complexity grid; each in [1, 10^6].')
_TRIALS = flags.DEFINE_integer('trials', 5, 'Independent trials (A*, data) per (K, L, n), >= 1.')
_INITS = flags.DEFINE_integer('inits', 5, 'Random inits per trial and trained model, >= 1.')
_D = flags.DEFINE_integer('d', 4, 'Width d of the untied layer (E, C are K x d, W d x d); d < K '
                          'allowed; in [1, 1000].')
_D_TIED = flags.DEFINE_integer('d_tied', 0, 'Width d of the tied layer, >= max K (0: d = K).')
_STEPS = flags.DEFINE_integer('max_steps', 400, 'Stop rule cap: optimizer steps at most, in '
                              '[1, 100000].')
_GTOL = flags.DEFINE_float('gtol', 1e-6, 'Stop rule: stop when ||gradient of the objective||_2 '
                           '<= gtol (>= 0; 0: always --max_steps).')
_LR = flags.DEFINE_float('lr', 0.3, 'Adam initial learning rate, in (0, 10].')
_LR_DECAY = flags.DEFINE_integer('lr_decay', 150, 'Adam learning rate falls 10x every lr_decay '
                                 'steps, >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Ground truth A* ~ N(0, scale^2) (and the init '
                            'scale of W); scale > 0.')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge (ridge/2)||A||^2 on every objective (the '
                            'MLE\'s); >= 0.')
_HELDOUT = flags.DEFINE_integer('heldout', 20000, 'Held-out samples of the true CCMC per trial '
                                '(sample complexity\'s Monte-Carlo set), in [1000, 10^6].')

NAME, CURVES = 'attention_training', 'attention_training_curves'
FLAG_NAMES = ['K', 'L', 'n', 'trials', 'inits', 'd', 'd_tied', 'max_steps', 'gtol', 'lr',
              'lr_decay', 'scale', 'ridge', 'heldout']
QUICK = {'K': ['4'], 'n': ['300', '1000', '3000'], 'trials': 3, 'inits': 3, 'max_steps': 300,
         'heldout': 2000}


def settings():
  ns = tuple(sorted({int(v) for v in _N.value}))
  return [trials.Setting(int(K), int(L), ns, _HELDOUT.value, _SCALE.value, _RIDGE.value,
                         _D_TIED.value, _D.value, _INITS.value, _STEPS.value, _GTOL.value,
                         _LR.value, _LR_DECAY.value)
          for K in dict.fromkeys(_K.value) for L in dict.fromkeys(_L.value)]


def validate():
  """One-line errors for bad flags, before any work."""
  common.check_int('K', _K.value, 2, 100)
  common.check_int('L', _L.value, 1, 1000)
  common.check_int('n', _N.value, 1, 10 ** 6)
  common.check_int('trials', _TRIALS.value, 1, 1000)
  common.check_int('inits', _INITS.value, 1, 100)
  common.check_int('d', _D.value, 1, 1000)
  if _D_TIED.value:
    common.check_int('d_tied', _D_TIED.value, max(int(k) for k in _K.value), 1000)
  common.check_int('max_steps', _STEPS.value, 1, 10 ** 5)
  common.check_float('gtol', _GTOL.value, 0)
  common.check_float('lr', _LR.value, 0, 10, lo_open=True)
  common.check_int('lr_decay', _LR_DECAY.value, 1)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  common.check_int('heldout', _HELDOUT.value, 1000, 10 ** 6)
  for s in settings():
    common.check_memory(trials.memory_terms(s, _TRIALS.value))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


def run(_, results):
  """Every (K, L, n) cell not yet in the results; both tables written after each one."""
  table, curves, seed = results[NAME], results[CURVES], flags.FLAGS.seed
  for s in settings():
    todo = [n for n in s.ns if not table.done({'K': s.K, 'L': s.L, 'n': n})]
    if not todo:
      continue
    for n, rows, curve in trials.run_setting(s, trials.keys(seed, s, _TRIALS.value), todo):
      cell = {'K': s.K, 'L': s.L, 'n': n}
      with results.unit():  # both tables or neither (--resume)
        table.add({**cell, 'seed': seed, **rows})
        curves.add({**cell, 'seed': seed, **curve})
      common.progress(f'{NAME}: K={s.K} L={s.L} n={n}: {trials.progress_line(rows)}',
                      table.start)


def message(summary):
  return '; '.join(f'{k} {v:.3g}' for k, v in summary['summary'].items())


SPEC = common.Spec(
    name=NAME, flag_names=FLAG_NAMES, validate=validate, run=run, plot=plots.plot,
    tables=[common.Table(NAME, plots.KEYS, lambda frame: {'summary': trials.summary(frame)}),
            common.Table(CURVES, plots.CURVE_KEYS)],
    message=message)

if __name__ == '__main__':
  common.run(SPEC, quick=QUICK)
