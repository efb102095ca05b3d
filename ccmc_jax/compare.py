"""Compare two results CSVs cell by cell: rows matched by their setting columns, numbers within
a tolerance, strings exactly.

  python -m ccmc_jax.compare results/sample_complexity.csv other/sample_complexity.csv
  python -m ccmc_jax.compare A.csv B.csv --rtol=1e-4 --atol=1e-7 --keys=K,L,n,trial

The key columns default to those recorded in ``A.meta.json`` (a ``keys`` list), else the leading
non-float columns of ``A`` (the house layout puts the settings, ``seed`` and ``trial`` before the
metrics). Exit status: 0 when the files agree, 1 when some cell differs beyond tolerance, 2 with
a one-line ``error: ...`` when they cannot be compared (missing or malformed file, different
columns, duplicate or missing keys, different rows).

A library module with a command line (argparse), not an experiment: no JAX computation.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ccmc_jax import io

MAX_SHOWN = 20  # differing cells printed before the rest are only counted


class CompareError(ValueError):
  """Two tables that cannot be compared (reported as one line, exit status 2)."""


@dataclasses.dataclass
class Report:
  """Outcome of :func:`compare_frames`.

  Attributes:
    keys: the key columns rows were matched by.
    rows: number of matched rows.
    columns: the compared (non-key) columns.
    diffs: one row per differing cell: the key values, ``column``, ``a``, ``b``, ``abs_diff``
      (NaN for string columns), sorted by key.
    max_abs_diff: per numeric column, the largest ``|a - b|`` over rows where both are finite.
    rtol, atol: the tolerances used.
  """
  keys: list
  rows: int
  columns: list
  diffs: pd.DataFrame
  max_abs_diff: dict
  rtol: float
  atol: float

  @property
  def agree(self) -> bool:
    return self.diffs.empty

  @property
  def differing_rows(self) -> int:
    return 0 if self.diffs.empty else len(self.diffs[self.keys].drop_duplicates())

  def summary(self) -> str:
    """One line: agree/differ, counts, tolerances and the worst column."""
    tol = f'rtol={self.rtol:g} atol={self.atol:g}'
    finite = {c: v for c, v in self.max_abs_diff.items() if np.isfinite(v)}
    worst = max(finite, key=finite.get) if finite else None
    worst_txt = f'; max |a-b| {finite[worst]:.3g} in column {worst}' if worst else ''
    if self.agree:
      return (f'agree: {self.rows} rows x {len(self.columns)} columns within {tol}'
              f'{worst_txt}')
    return (f'differ: {self.differing_rows} of {self.rows} rows ({len(self.diffs)} cells) '
            f'beyond {tol}{worst_txt}')

  def table(self, max_shown=MAX_SHOWN) -> str:
    """The first ``max_shown`` differing cells as an aligned text table, then a count."""
    if self.diffs.empty:
      return ''
    shown = self.diffs.head(max_shown)
    text = shown.to_string(index=False, float_format=lambda v: f'{v:.9g}')
    if len(self.diffs) > max_shown:
      text += f'\n... and {len(self.diffs) - max_shown} more differing cells'
    return text


def infer_keys(df: pd.DataFrame) -> list:
  """The leading non-float columns (settings, seed, trial come before the metrics); all the
  non-float columns when the first column is a float."""
  is_key = [not pd.api.types.is_float_dtype(df[c]) for c in df.columns]
  leading = []
  for c, k in zip(df.columns, is_key):
    if not k:
      break
    leading.append(c)
  return leading or [c for c, k in zip(df.columns, is_key) if k]


def _key_text(df, keys, index, limit=3):
  """A few rows' key values, as 'K=5 n=1000' strings."""
  rows = df.loc[list(index)[:limit], keys]
  return '; '.join(' '.join(f'{k}={v}' for k, v in r.items()) for _, r in rows.iterrows())


def _key_strings(df, keys):
  """One string per row joining its key values; numeric keys go through float64 so that an
  int column and a float column holding the same numbers (5 and 5.0) match."""
  parts = [df[k].astype(np.float64).map(repr) if pd.api.types.is_numeric_dtype(df[k])
           else df[k].astype(str) for k in keys]
  return pd.concat(parts, axis=1).agg('\x1f'.join, axis=1)


def _check_unique(df, keys, name):
  dup = df.duplicated(keys, keep=False)
  if dup.any():
    raise CompareError(f'{name} has {int(dup.sum())} rows with duplicate keys '
                       f'({", ".join(keys)}), e.g. {_key_text(df, keys, df.index[dup], 1)}; '
                       f'pass --keys naming columns that identify a row')


def _check_same_kind(x, y, column, names):
  """A column numeric in one table must be numeric in the other: a stray string in a number
  column is a malformed file, not a difference."""
  num_x, num_y = pd.api.types.is_numeric_dtype(x), pd.api.types.is_numeric_dtype(y)
  if num_x == num_y:
    return
  text, name = (y, names[1]) if num_x else (x, names[0])
  values = pd.to_numeric(text, errors='coerce')
  bad = text[values.isna() & text.notna()]
  example = repr(str(bad.iloc[0])) if len(bad) else '?'
  raise CompareError(f'{name}: non-numeric value {example} in column {column}, which is '
                     f'numeric in the other file')


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, keys: Sequence[str], rtol=1e-5,
                   atol=1e-8, names=('A', 'B')) -> Report:
  """Match the rows of ``a`` and ``b`` by ``keys`` and compare every other column.

  Numeric columns (in both tables) are equal when ``numpy.isclose(a, b, rtol, atol)`` with
  NaN == NaN; other columns must be equal as strings.

  Args:
    a, b: the tables (e.g. from :func:`ccmc_jax.io.read_csv`).
    keys: columns identifying a row; each key must be unique in both tables.
    rtol, atol: tolerances of ``numpy.isclose`` (``|a - b| <= atol + rtol |b|``).
    names: how the two tables are called in error messages.
  Returns:
    Report.
  Raises:
    CompareError: different column sets, an unknown or duplicate key, different row sets.
  """
  keys = list(keys)
  if not keys:
    raise CompareError('no key columns: pass --keys naming the columns that identify a row')
  if set(a.columns) != set(b.columns):
    only_a = sorted(set(a.columns) - set(b.columns))
    only_b = sorted(set(b.columns) - set(a.columns))
    raise CompareError(f'different columns: only in {names[0]}: {", ".join(only_a) or "-"}; '
                       f'only in {names[1]}: {", ".join(only_b) or "-"}')
  missing = [k for k in keys if k not in a.columns]
  if missing:
    raise CompareError(f'key column(s) {", ".join(missing)} not in the tables '
                       f'(columns: {", ".join(map(str, a.columns))})')
  _check_unique(a, keys, names[0])
  _check_unique(b, keys, names[1])
  ka, kb = _key_strings(a, keys), _key_strings(b, keys)
  only_a, only_b = ~ka.isin(set(kb)), ~kb.isin(set(ka))
  if only_a.any() or only_b.any():
    parts = []
    if only_a.any():
      parts.append(f'{int(only_a.sum())} only in {names[0]} '
                   f'(e.g. {_key_text(a, keys, a.index[only_a], 1)})')
    if only_b.any():
      parts.append(f'{int(only_b.sum())} only in {names[1]} '
                   f'(e.g. {_key_text(b, keys, b.index[only_b], 1)})')
    raise CompareError(f'different rows (keys {", ".join(keys)}): {"; ".join(parts)}')
  a = a.set_index(ka).sort_index()
  b = b.set_index(kb).loc[a.index]
  columns = [c for c in a.columns if c not in keys]
  bad_cells, max_abs = [], {}
  for c in columns:
    x, y = a[c], b[c]
    _check_same_kind(x, y, c, names)
    if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
      xv, yv = x.to_numpy(np.float64), y.to_numpy(np.float64)
      same = np.isclose(xv, yv, rtol=rtol, atol=atol, equal_nan=True)
      both = np.isfinite(xv) & np.isfinite(yv)
      max_abs[c] = float(np.max(np.abs(xv - yv)[both])) if both.any() else 0.0
      diff = np.abs(xv - yv)
    else:
      xs, ys = x.astype(str).where(x.notna(), '<NA>'), y.astype(str).where(y.notna(), '<NA>')
      same = (xs == ys).to_numpy()
      diff = np.full(len(x), np.nan)
    for i in np.flatnonzero(~same):
      bad_cells.append({**a.iloc[i][keys].to_dict(), 'column': c, 'a': x.iloc[i],
                        'b': y.iloc[i], 'abs_diff': diff[i]})
  diffs = pd.DataFrame(bad_cells, columns=keys + ['column', 'a', 'b', 'abs_diff'])
  if len(diffs):
    order = {c: i for i, c in enumerate(columns)}
    diffs = (diffs.assign(_col=diffs['column'].map(order))
             .sort_values(keys + ['_col'], kind='stable').drop(columns='_col')
             .reset_index(drop=True))
  return Report(keys, len(a), columns, diffs, max_abs, rtol, atol)


def default_keys(path, frame) -> list:
  """Keys from the ``keys`` list of ``<path minus .csv>.meta.json``, else :func:`infer_keys`."""
  meta = io.read_meta(os.path.splitext(path)[0] + '.meta.json') or {}
  keys = meta.get('keys')
  if isinstance(keys, list) and keys:
    return [str(k) for k in keys]
  return infer_keys(frame)


def compare_files(path_a, path_b, keys: Optional[Sequence[str]] = None, rtol=1e-5, atol=1e-8):
  """Read two CSVs (raising io.ResultsError when unusable) and :func:`compare_frames` them."""
  a, b = io.read_csv(path_a), io.read_csv(path_b)
  keys = list(keys) if keys else default_keys(path_a, a)
  return compare_frames(a, b, keys, rtol, atol, names=(path_a, path_b))


def _nonneg_float(text):
  try:
    v = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
  if not (np.isfinite(v) and v >= 0):
    raise argparse.ArgumentTypeError(f'{text!r} is not a finite number >= 0')
  return v


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    # One line (argparse prints the usage too): same shape as every other error of the suite.
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> int:
  parser = _Parser(prog='python -m ccmc_jax.compare', description=__doc__.split('\n\n')[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('a', help='first results CSV (its .meta.json names the key columns)')
  parser.add_argument('b', help='second results CSV')
  parser.add_argument('--rtol', type=_nonneg_float, default=1e-5,
                      help='relative tolerance of numpy.isclose (default 1e-5)')
  parser.add_argument('--atol', type=_nonneg_float, default=1e-8,
                      help='absolute tolerance of numpy.isclose (default 1e-8)')
  parser.add_argument('--keys', default='',
                      help='comma-separated key columns, e.g. K,L,n,trial (default: from the '
                           'meta sidecar of A, else its leading non-float columns)')
  args = parser.parse_args(argv)
  keys = [k.strip() for k in args.keys.split(',') if k.strip()]
  try:
    report = compare_files(args.a, args.b, keys, args.rtol, args.atol)
  except (io.ResultsError, CompareError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if not report.agree:
    print(report.table())
  print(report.summary())
  return 0 if report.agree else 1


if __name__ == '__main__':
  sys.exit(main())
