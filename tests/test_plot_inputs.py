"""``--plot_only`` on an edited results CSV: every value a figure cannot draw (a size of 0, a
fractional K, a negative or infinite error, a probability above 1, a NaN index, a header-only
file) is one ``io.ResultsError`` naming the file, the column and the row; never a traceback
(LinAlgError, OverflowError, KeyError) and never a silently drawn figure. In-process: the plot
functions are called on copies of the committed CSVs, and the check fires before any drawing."""
import importlib
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from ccmc_jax import io
from conftest import ROOT

# figure -> the CSVs its plot function takes, in order
FIGURES = {
    'attention_equivalence': ['attention_equivalence', 'attention_equivalence_points',
                              'attention_equivalence_example'],
    'collapse': ['collapse', 'collapse_seeds'],
    'collapse_statistics': ['collapse_statistics'],
    'positional_encoding': ['positional_encoding', 'positional_encoding_weights',
                            'positional_encoding_equivalence'],
    'real_text': ['real_text', 'real_text_fit', 'real_text_curves'],
    'sample_complexity': ['sample_complexity'],
    'self_vs_cross': ['self_vs_cross', 'self_vs_cross_graph'],
    'trajectory_learning': ['trajectory_learning', 'trajectory_learning_rows'],
    'vocabulary_scaling': ['vocabulary_scaling'],
    'ccmc_example': ['ccmc_example'],
}

# (figure, csv, column, value): each was a traceback or a silently drawn figure before
BAD = [
    ('positional_encoding', 'positional_encoding', 'n', 0),  # LinAlgError (slope of log 0)
    ('positional_encoding', 'positional_encoding', 'n', -1),  # LinAlgError
    ('sample_complexity', 'sample_complexity', 'n', 0),
    ('sample_complexity', 'sample_complexity', 'K', 2.5),  # fractional K: drawn as a curve
    ('sample_complexity', 'sample_complexity', 'error', -1.0),  # negative error: drawn
    ('sample_complexity', 'sample_complexity', 'predicted_error', np.inf),  # drawn
    ('vocabulary_scaling', 'vocabulary_scaling', 'error', np.inf),
    ('vocabulary_scaling', 'vocabulary_scaling', 'K', 0),
    ('self_vs_cross', 'self_vs_cross', 'error', -0.5),
    ('self_vs_cross', 'self_vs_cross', 'n', 2.5),
    ('trajectory_learning', 'trajectory_learning', 'T', 0),
    ('trajectory_learning', 'trajectory_learning_rows', 'row_error', np.inf),
    ('collapse', 'collapse', 'seed', np.inf),  # OverflowError
    ('collapse', 'collapse', 'seed', np.nan),  # ValueError: cannot convert NaN
    ('collapse', 'collapse_seeds', 'top1', 1.5),  # a share above 1: drawn
    ('collapse_statistics', 'collapse_statistics', 'L0', np.nan),  # ValueError
    ('collapse_statistics', 'collapse_statistics', 'K', np.inf),  # OverflowError
    ('attention_equivalence', 'attention_equivalence', 'prompts', np.inf),  # OverflowError
    ('attention_equivalence', 'attention_equivalence', 'max_abs_diff', -1.0),
    ('attention_equivalence', 'attention_equivalence_points', 'ccmc', 1.5),
    ('real_text', 'real_text', 'prompt', -1),  # KeyError
    ('real_text', 'real_text', 'seq_rep_4', np.inf),
    ('real_text', 'real_text_curves', 'top1_mean', -0.1),
    ('ccmc_example', 'ccmc_example', 'value', np.inf),
]


def copy_results(tmp_path, figure):
  paths = []
  for name in FIGURES[figure]:
    dst = tmp_path / f'{name}.csv'
    shutil.copy(os.path.join(ROOT, 'results', f'{name}.csv'), dst)
    paths.append(str(dst))
  return paths


def plot_function(figure):
  module = importlib.import_module(f'experiments.plots.{figure}')
  return module.draw if figure == 'real_text' else module.plot


@pytest.mark.parametrize('figure,csv,column,value', BAD,
                         ids=[f'{c}.{col}={v}' for _, c, col, v in BAD])
def test_bad_value_is_one_line_naming_file_column_row(tmp_path, figure, csv, column, value):
  paths = copy_results(tmp_path, figure)
  path = str(tmp_path / f'{csv}.csv')
  df = pd.read_csv(path)
  row = len(df) // 2
  df[column] = df[column].astype(float)
  df.loc[row, column] = value
  df.to_csv(path, index=False)
  with pytest.raises(io.ResultsError) as e:
    plot_function(figure)(*paths)
  message = str(e.value)
  assert '\n' not in message
  assert path in message and f'column {column}' in message, message
  if not pd.isna(value) or column != 'value':
    assert f'row {row + 2}' in message, message


@pytest.mark.parametrize('figure', sorted(set(FIGURES) - {'ccmc_example'}))
def test_header_only_csv_is_one_line(tmp_path, figure):
  paths = copy_results(tmp_path, figure)
  for path in paths:
    pd.read_csv(path).iloc[:0].to_csv(path, index=False)
  with pytest.raises(io.ResultsError, match='no rows|no row'):
    plot_function(figure)(*paths)


def test_read_csv_value_checks(tmp_path):
  path = tmp_path / 't.csv'
  pd.DataFrame({'K': [5, 10], 'p': [0.5, 1.0], 'e': [0.1, np.nan]}).to_csv(path, index=False)
  df = io.read_csv(path, positive_int=['K'], probability=['p'], nonnegative=['e'],
                   nan_ok=['e'], nonempty=True)
  assert df['K'].tolist() == [5, 10]
  with pytest.raises(io.ResultsError, match=r'column e has nan at row 3.*no NaN'):
    io.read_csv(path, nonnegative=['e'])
  with pytest.raises(io.ResultsError, match=r'column K has 5 at row 2: .* in \[0, 1\]'):
    io.read_csv(path, probability=['K'])
  with pytest.raises(io.ResultsError, match='lacks column'):
    io.read_csv(path, finite=['missing'])
