"""The paper's worked CCMC example (paper Sec. 2, Fig. 1 / Definition 2.1 / Lemma 2.2).

K = 3 tokens and the prompt X = [1, 2, 1] in the paper's 1-indexed notation, which is
X = [0, 1, 0] in the 0-indexed tokens of the code and of the CSV (the default --X). From a fixed
attention matrix W (the default --W, or any K*K numbers) the library computes the token counts
m(X), the base chain P = softmax(A), A = W^T (E = I), and the next-token law
pi^X_j = m_j(X) P[x_L, j] / sum_l m_l(X) P[x_L, l] (ccmc_jax.trials.ccmc_example). Every number
on the figure (experiments.plots.ccmc_example) is read from

  results/ccmc_example.csv   long format: quantity, row, col, value (see QUANTITIES)
  figures/ccmc_example.{png,pdf}

  python -m experiments.ccmc_example --W=0.4,1,0.2,1.3,-0.5,0.9,0.3,0.8,-0.3 --X=0,1,0
"""
from __future__ import annotations

from absl import flags
import numpy as np

from ccmc_jax.trials import ccmc_example as example
from experiments import common
from experiments.plots import ccmc_example as plots

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_W = flags.DEFINE_list('W', example.DEFAULT_W, 'Attention weights W (paper Sec. 2), K*K numbers '
                       'in row-major order; K = sqrt(count), 2 <= K <= 12; each in [-40, 40] (no '
                       'entry of the float32 P underflows). Scores A = W^T (E = I).')
_X = flags.DEFINE_list('X', example.DEFAULT_X, 'Prompt X = (x_1, ..., x_L), 0-indexed tokens in '
                       '[0, K-1]; the last one is the query x_L. The paper\'s Fig. 1 prompt '
                       '[1, 2, 1] (1-indexed) is 0,1,0.')

NAME = 'ccmc_example'
FLAG_NAMES = ['W', 'X']
QUANTITIES = example.QUANTITIES


def validate():
  common.check_float('W', _W.value, -example.MAX_ABS_W, example.MAX_ABS_W)
  W = common.parse_W('W', _W.value)
  X = common.parse_X('X', _X.value, W.shape[0])
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)
  return W, X


def run(W_X, results):
  # --quick and --resume change nothing: the example takes well under a second.
  q = example.example_quantities(*W_X)
  results[NAME].add(example.to_columns(q, example.CCMC_QUANTITIES))


def summary(frame):
  pi = frame[frame['quantity'] == 'pi'].sort_values('col')['value'].to_numpy()
  return {'pi': [round(float(v), 6) for v in pi]}


SPEC = common.Spec(NAME, [common.Table(NAME, example.KEYS, summary, resume=False)], FLAG_NAMES,
                   validate, run, plots.plot,
                   message=lambda s: f'pi^X = {np.round(s["pi"], 4).tolist()}')

if __name__ == '__main__':
  common.run(SPEC)
