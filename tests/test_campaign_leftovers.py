"""Leftovers of the issue-14 campaign: ``--plot_only`` on a CSV whose rows were written twice
(every plot drew them twice), fractional or zero K in trajectory_learning's rows table, flags
that gpt2_repetition skipped unchecked, collapse's ``--P_file`` (numpy warnings before the
error line; junk, NaN, a folder, a wrong shape) and the flags that size collapse's arrays
(``--window``, ``--batch``) missing from the memory estimate. In-process where possible."""
import importlib
import os
import shutil

import pandas as pd
import pytest

from ccmc_jax import io
from conftest import ROOT

# figure -> (the CSVs its plot function takes, in order; the plot module's key constant per CSV)
FIGURES = {
    'ccmc_example': (['ccmc_example'], None),
    'collapse': (['collapse', 'collapse_seeds'], ['KEYS', 'SEED_KEYS']),
    'positional_encoding': (['positional_encoding', 'positional_encoding_weights',
                             'positional_encoding_equivalence'],
                            ['KEYS', 'WEIGHT_KEYS', 'EQ_KEYS']),
    'sample_complexity': (['sample_complexity'], ['KEYS']),
    'trajectory_learning': (['trajectory_learning', 'trajectory_learning_rows'],
                            ['KEYS', 'ROW_KEYS']),
    'vocabulary_scaling': (['vocabulary_scaling'], ['KEYS']),
    'attention_equivalence': (['attention_equivalence', 'attention_equivalence_points',
                               'attention_equivalence_example'], ['KEYS', 'POINT_KEYS', None]),
    'collapse_statistics': (['collapse_statistics'], ['KEYS']),
}
CASES = [(f, i) for f, (names, _) in FIGURES.items() for i in range(len(names))
         if not (f == 'attention_equivalence' and i == 2)]


def copy_results(tmp_path, figure):
  paths = []
  for name in FIGURES[figure][0]:
    dst = tmp_path / f'{name}.csv'
    shutil.copy(os.path.join(ROOT, 'results', f'{name}.csv'), dst)
    paths.append(str(dst))
  return paths


@pytest.mark.parametrize('figure,index', CASES, ids=[f'{f}.{i}' for f, i in CASES])
def test_plot_refuses_rows_written_twice(tmp_path, figure, index):
  """Before: every row appended again was drawn (means and counts silently doubled)."""
  paths = copy_results(tmp_path, figure)
  path = paths[index]
  with open(path) as f:
    lines = f.read().splitlines()
  row = len(lines) // 2  # a data line (0-based in the file; the header is line 1)
  with open(path, 'a') as f:
    f.write(lines[row] + '\n')
  module = importlib.import_module(f'experiments.plots.{figure}')
  with pytest.raises(io.ResultsError) as e:
    module.plot(*paths)
  message = str(e.value)
  assert '\n' not in message
  assert path in message and f'row {len(lines) + 1}' in message and f'row {row + 1}' in message
  keys = FIGURES[figure][1]
  key_names = (getattr(module, keys[index]) if keys
               else importlib.import_module('ccmc_jax.trials.ccmc_example').KEYS)
  df = pd.read_csv(path)
  for k in key_names:
    assert f'{k}={df[k].iloc[row - 1]}' in message, message


def test_read_csv_unique(tmp_path):
  path = tmp_path / 't.csv'
  pd.DataFrame({'K': [5, 5, 6, 5], 'trial': [0, 1, 0, 1], 'e': [1, 2, 3, 4]}).to_csv(path,
                                                                                     index=False)
  assert len(io.read_csv(path, unique=['K', 'trial', 'e'])) == 4
  with pytest.raises(io.ResultsError,
                     match=r'row 5 repeats the key K=5, trial=1 of row 3 \(1 repeated'):
    io.read_csv(path, unique=['K', 'trial'])
  with pytest.raises(io.ResultsError, match='lacks column'):
    io.read_csv(path, unique=['seed'])


@pytest.mark.parametrize('column,value', [('K', 2.5), ('K', 0), ('L0', 0), ('trial', -1)])
def test_trajectory_rows_sizes_checked(tmp_path, column, value):
  """Before: a fractional or zero K (or L0) in trajectory_learning_rows.csv was drawn."""
  from experiments.plots import trajectory_learning  # pylint: disable=import-outside-toplevel
  paths = copy_results(tmp_path, 'trajectory_learning')
  df = pd.read_csv(paths[1])
  df[column] = df[column].astype(float)
  df.loc[3, column] = value
  df.to_csv(paths[1], index=False)
  with pytest.raises(io.ResultsError, match=f'column {column} has {value:g} at row 5'):
    trajectory_learning.read(*paths)


# ---- gpt2_repetition without --hf_model_dir: every flag is still checked ---------------------

@pytest.mark.parametrize('flag,value,needle', [
    ('steps', -1, '--steps=-1 is invalid'),
    ('ngram', -1, '--ngram=-1 is invalid'),
    ('prompt_ids', ['nan'], '--prompt_ids=nan is invalid'),
    ('prompt_ids', ['3', '-2'], '--prompt_ids=-2 is invalid'),
    ('results_dir', '/proc/x', '--results_dir=/proc/x is not a writable folder'),
    ('figures_dir', '<file>/x', '--figures_dir='),
])
def test_gpt2_skip_checks_every_flag_first(tmp_path, flag, value, needle):
  """Before: each of these printed the "skipped" notice and exited 0."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from experiments import common  # pylint: disable=import-outside-toplevel
  from experiments import gpt2_repetition  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  if value == '<file>/x':
    value = f'{blocker}/x'
  dirs = {'results_dir': str(tmp_path / 'r'), 'figures_dir': str(tmp_path / 'f')}
  with flagsaver.flagsaver(hf_model_dir='', plot_only=False, **{**dirs, flag: value}):
    with pytest.raises(common.FlagError) as e:
      gpt2_repetition.entry([])
  assert '\n' not in str(e.value) and str(e.value).startswith(needle), str(e.value)
  assert 'is not a writable folder' in str(e.value) or 'is invalid' in str(e.value)
  assert not os.path.exists(tmp_path / 'r') and not os.path.exists(tmp_path / 'f')
  with flagsaver.flagsaver(hf_model_dir='', plot_only=False, **dirs):
    gpt2_repetition.entry([])  # good flags: the notice, no folder made
  assert not os.path.exists(tmp_path / 'r') and not os.path.exists(tmp_path / 'f')


# ---- collapse --P_file ------------------------------------------------------------------------

def _junk(path):
  path.write_bytes(b'\x00\xff\xfe\x89PNG\r\n\x1a\n\x00\x00')


@pytest.mark.parametrize('make,needle', [
    (lambda p: p.write_text(''), 'is empty'),
    (lambda p: p.write_text('\n\n'), 'is not a numeric K x K matrix'),
    (_junk, 'is not a numeric K x K matrix'),
    (lambda p: p.write_text('0.5,nan\n0.5,0.5\n'), 'finite'),
    (lambda p: p.mkdir(), 'is not a file'),
    (lambda p: p.write_text('0.5,0.5\n'), 'square'),
    (lambda p: p.write_text('0.5,0.6\n0.5,0.5\n'), 'row-stochastic'),
    (lambda p: p.write_text('a,b\nc,d\n'), 'is not a numeric K x K matrix'),
])
def test_P_file_read_is_one_line_no_warning(tmp_path, make, needle):
  """Before: an empty file let numpy's UserWarning ("input contained no data", two lines)
  escape before the error line; now every bad file is one ValueError naming the flag."""
  import warnings  # pylint: disable=import-outside-toplevel
  from ccmc_jax import model  # pylint: disable=import-outside-toplevel
  from ccmc_jax.trials import collapse  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'P.csv'
  make(path)
  name = f'--P_file={path}'
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # a warning that escapes fails the test
    with pytest.raises(ValueError) as e:
      model.check_stochastic(collapse.read_P_file(str(path), name), name=name)
  message = str(e.value)
  assert '\n' not in message and message.startswith(name) and needle in message, message


def test_P_file_empty_is_exactly_one_stderr_line(tmp_path):
  """The campaign's case as a user runs it: exit 2, one line, no file."""
  from conftest import run_module  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'P.csv'
  path.write_text('')
  r = run_module('experiments.collapse', '--quick', f'--P_file={path}', tmp=tmp_path)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: --P_file={path} is empty'), r.stderr
  assert not os.path.exists(tmp_path / 'results') or not os.listdir(tmp_path / 'results')


# ---- the context window in collapse's memory estimate -----------------------------------------

def test_collapse_window_is_in_the_memory_estimate():
  """Before: --window=10^8 (--quick: seeds=20, K=6) was estimated like --window=0, so the run
  wrote its sidecars and then died asking XLA for 52 GiB without naming --window. The term
  is checked against measured peaks in test_memory.MEASURED; here: the refusal names it."""
  from ccmc_jax import memory  # pylint: disable=import-outside-toplevel
  terms = memory.collapse(6, 100, 20, window=10 ** 8)
  assert memory.peak(terms) > 52 * 2 ** 30  # XLA's failed allocation alone was 52.2 GiB
  assert memory.peak(memory.collapse(6, 100, 20)) < 2 ** 30
  with pytest.raises(io.UserError, match=r'^--window=100000000 with --seeds=20 needs about'):
    io.check_memory(terms, io.UserError, total=24 * 2 ** 30)


def test_collapse_statistics_prompt_length_is_in_the_memory_estimate():
  """Before: the (L0, K) one-hot prompts were not estimated: --L0=100000 --K_base=200 with 16
  seeds peaked at 1.7 GB against a 0.5 GiB estimate (measured in test_memory.MEASURED), and
  --K_base=1000 --L0=100000 ran into XLA's allocation failure. --batch beyond --seeds is
  capped by --seeds (a valid setting, not a refusal)."""
  from ccmc_jax import memory  # pylint: disable=import-outside-toplevel
  from ccmc_jax.trials import collapse_statistics as cs  # pylint: disable=import-outside-toplevel
  pads = cs.prompt_pads(cs.settings(['8'], ['8', '100000'], ['1'], 1000))
  assert pads == {8: 8, 1000: 100000}
  terms = memory.collapse_statistics(1000, 5000, 50, 200, (('L0', 100000), ('K_base', 1000)))
  with pytest.raises(io.UserError, match=r'^--L0=100000 with --K_base=1000 needs about .*prompts'):
    io.check_memory(terms, io.UserError, total=24 * 2 ** 30)
  capped = memory.collapse_statistics(8, 100000, 10 ** 8, 16, (('K', 8), ('K', 8)))
  assert memory.peak(capped) < 2 ** 30
