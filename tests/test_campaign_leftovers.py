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
