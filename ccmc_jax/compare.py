"""Compare results CSVs cell by cell: rows matched by their setting columns, numbers within
per-column tolerances, strings exactly.

  python -m ccmc_jax.compare --reference              # results/ vs the version committed in git
  python -m ccmc_jax.compare --reference /tmp/mine    # a rerun's folder vs the committed results/
  python -m ccmc_jax.compare results /tmp/mine        # two folders: every CSV they both hold
  python -m ccmc_jax.compare results/sample_complexity.csv /tmp/mine/sample_complexity.csv
  python -m ccmc_jax.compare A.csv B.csv --rtol=1e-4 --atol=1e-7 --keys=K,L,n,trial

A is the reference, B the rerun. The key columns come from A's ``.meta.json`` (a ``keys`` list),
else B's, else the leading non-float columns of A (the house layout puts the settings, ``seed``
and ``trial`` before the metrics); keys are matched exactly as text (``5`` = ``5.0``; integers of
any size). The tolerances come from A's sidecar (a ``tolerances`` field), else B's, else
``ccmc_jax.tolerances`` for the table's name: per column ``|b - a| <= atol + rtol |a|``, with
informational columns reported apart and never failing; ``--rtol``/``--atol`` set one tolerance
for every column instead (informational ones included). Two header-only tables with the same
columns agree (0 rows). Exit status: 0 when everything agrees, 1 when some cell differs beyond
tolerance, 2 with a one-line ``error: ...`` per table that cannot be compared (missing, empty or
malformed file or sidecar, different columns, duplicate or missing keys, different rows).

A library module with a command line (argparse), not an experiment: no JAX computation.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import decimal
import json
import os
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ccmc_jax import io
from ccmc_jax import tolerances as tol_lib

MAX_SHOWN = 20  # differing cells printed before the rest are only counted
KEY_SEP = '\x1f'


class CompareError(ValueError):
  """Two tables that cannot be compared (reported as one line, exit status 2)."""


@dataclasses.dataclass
class Report:
  """Outcome of :func:`compare_frames`.

  Attributes:
    keys: the key columns rows were matched by.
    rows: number of matched rows.
    columns: the compared (non-key) columns.
    diffs: one row per differing cell of a checked column: the key values, ``column``, ``a``,
      ``b``, ``abs_diff`` (NaN for string columns), sorted by key.
    max_abs_diff: per numeric column, the largest ``|a - b|`` over rows where both are finite.
    rtol, atol: the uniform tolerances used, or None when they were per column.
    tolerances: column -> :class:`ccmc_jax.tolerances.Tolerance` actually applied.
    max_rel_diff: per numeric column, the largest ``|a - b| / |a|`` over rows where both are
      finite and ``a != 0``.
    info_diffs: like ``diffs``, for the informational columns (reported, not failing).
    max_tolerance_used: per numeric column, the largest ``|a - b| / (atol + rtol |a|)``: how
      much of its tolerance the column used (> 1: beyond it).
  """
  keys: list
  rows: int
  columns: list
  diffs: pd.DataFrame
  max_abs_diff: dict
  rtol: Optional[float] = None
  atol: Optional[float] = None
  tolerances: dict = dataclasses.field(default_factory=dict)
  max_rel_diff: dict = dataclasses.field(default_factory=dict)
  info_diffs: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
  max_tolerance_used: dict = dataclasses.field(default_factory=dict)

  @property
  def agree(self) -> bool:
    return self.diffs.empty

  @property
  def differing_rows(self) -> int:
    return 0 if self.diffs.empty else len(self.diffs[self.keys].drop_duplicates())

  @property
  def informational(self) -> list:
    return [c for c in self.columns if self.tolerances.get(c, tol_lib.Tolerance()).informational]

  def _tol_text(self):
    if self.rtol is not None:
      return f'rtol={self.rtol:g} atol={self.atol:g}'
    return 'the recorded per-column tolerances'

  def _worst(self, columns):
    """'; max |a-b| x in column c (r relative, p% of its tolerance)' for the numeric column
    nearest its tolerance; '; identical numbers' when nothing moved."""
    finite = {c: v for c, v in self.max_abs_diff.items() if c in columns and np.isfinite(v)}
    if not finite:
      return ''
    if not any(finite.values()):
      return '; identical numbers'
    used = {c: self.max_tolerance_used.get(c, 0.0) for c in finite}
    worst = max(finite, key=lambda c: (used[c], finite[c]))
    rel = self.max_rel_diff.get(worst, np.nan)
    notes = [f'max relative {rel:.2g}'] if np.isfinite(rel) and rel > 0 else []
    if self.rtol is None and np.isfinite(used[worst]):
      notes.append(f'{used[worst]:.0%} of its tolerance')
    notes_txt = f' ({", ".join(notes)})' if notes else ''
    return f'; max |a-b| {finite[worst]:.3g} in column {worst}{notes_txt}'

  def summary(self) -> str:
    """One line: agree/differ, counts, tolerances and the worst checked column."""
    checked = [c for c in self.columns if c not in self.informational]
    worst = self._worst(checked)
    if self.agree:
      empty = ' (both tables are empty)' if self.rows == 0 else ''
      return (f'agree: {self.rows} rows x {len(checked)} columns within {self._tol_text()}'
              f'{worst}{empty}')
    return (f'differ: {self.differing_rows} of {self.rows} rows ({len(self.diffs)} cells) '
            f'beyond {self._tol_text()}{worst}')

  def info_summary(self) -> str:
    """One line on the informational columns that moved ('' when none did): their largest
    deviations and how many cells lie beyond their nominal tolerance."""
    parts = []
    for c in self.informational:
      a, r = self.max_abs_diff.get(c), self.max_rel_diff.get(c)
      n = int((self.info_diffs['column'] == c).sum()) if len(self.info_diffs) else 0
      if not n and not a:
        continue
      if a is None:  # a text column
        parts.append(f'{c}: {n} cells differ')
      else:
        rel = f', max relative {r:.2g}' if r is not None and np.isfinite(r) else ''
        parts.append(f'{c}: max |a-b| {a:.3g}{rel}, {n} cells beyond rtol='
                     f'{self.tolerances[c].rtol:g} atol={self.tolerances[c].atol:g}')
    return 'informational (reported, never a failure): ' + '; '.join(parts) if parts else ''

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


def _key_text(df, keys, positions, limit=3):
  """A few rows' key values, as 'K=5 n=1000' strings."""
  return '; '.join(' '.join(f'{k}={df[k].iloc[i]}' for k in keys)
                   for i in list(positions)[:limit])


def _canonical(value) -> str:
  """A key cell as exact text: numbers normalised without rounding (``5``, ``5.0`` and ``5e0``
  give one text; ``2**53 + 1`` stays itself), anything else as written."""
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return '<NA>'
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  text = str(value) if not isinstance(value, (float, np.floating)) else repr(float(value))
  try:
    d = decimal.Decimal(text.strip())
  except (decimal.InvalidOperation, ValueError):
    return text
  if not d.is_finite():
    return str(d)
  if d == d.to_integral_value() and d.adjusted() < 40:
    return str(int(d))
  return str(d.normalize())


def _key_strings(df, keys, raw=None):
  """One exact string per row joining its key values. ``raw`` (the file read as text), when
  given, supplies the key cells as written, so integers beyond 2**53 never pass through a
  float64."""
  src = raw if raw is not None else df
  parts = [[_canonical(v) for v in src[k].tolist()] for k in keys]
  return pd.Index([KEY_SEP.join(t) for t in zip(*parts)] if parts else [''] * len(df))


def _check_unique(df, keys, key_strings, name):
  dup = key_strings.duplicated(keep=False)
  if dup.any():
    raise CompareError(f'{name} has {int(dup.sum())} rows with duplicate keys '
                       f'({", ".join(keys)}), e.g. {_key_text(df, keys, np.flatnonzero(dup), 1)}; '
                       f'pass --keys naming columns that identify a row')


def _check_same_kind(x, y, column, names):
  """A column numeric in one table must be numeric in the other: a stray string in a number
  column is a malformed file, not a difference."""
  num_x, num_y = pd.api.types.is_numeric_dtype(x), pd.api.types.is_numeric_dtype(y)
  if num_x == num_y or len(x) == 0:
    return
  text, name = (y, names[1]) if num_x else (x, names[0])
  values = pd.to_numeric(text, errors='coerce')
  bad = text[values.isna() & text.notna()]
  example = repr(str(bad.iloc[0])) if len(bad) else '?'
  raise CompareError(f'{name}: non-numeric value {example} in column {column}, which is '
                     f'numeric in the other file')


def _is_int(s):
  return pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _numeric_close(x, y, t):
  """Cells of ``y`` (rerun) within ``t`` of ``x`` (reference), NaN == NaN, +-inf only equal to
  itself; integer columns exactly, in integers (no float64 rounding beyond 2**53).

  Returns (same, |x - y|, |x - y| / |x|, |x - y| / (atol + rtol |x|)), all float64."""
  if _is_int(x) and _is_int(y):
    xs, ys = [int(v) for v in x.tolist()], [int(v) for v in y.tolist()]
    diff_int = [abs(p - q) for p, q in zip(xs, ys)]
    same = np.array([d == 0 or d <= t.atol + t.rtol * abs(p) for d, p in zip(diff_int, xs)],
                    bool)
    diff = np.array(diff_int, np.float64)
    ref = np.abs(np.array(xs, np.float64))
  else:
    xv, yv = x.to_numpy(np.float64), y.to_numpy(np.float64)
    with np.errstate(invalid='ignore', over='ignore'):
      same = np.isclose(yv, xv, rtol=t.rtol, atol=t.atol, equal_nan=True)
      diff = np.abs(xv - yv)
    ref = np.abs(xv)
  with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
    ratio = lambda den: np.where(den > 0, diff / np.where(den > 0, den, 1.0),
                                 np.where(diff > 0, np.inf, 0.0))
    return same, diff, ratio(ref), ratio(t.atol + t.rtol * ref)


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, keys: Sequence[str], rtol=None,
                   atol=None, names=('A', 'B'), tolerances=None, raw=(None, None)) -> Report:
  """Match the rows of ``a`` (reference) and ``b`` (rerun) by ``keys``; compare the rest.

  Numeric columns (in both tables) are equal when ``|b - a| <= atol + rtol |a|`` (i.e.
  ``numpy.isclose(b, a, rtol, atol)``) with NaN == NaN; integer columns are compared in
  integers; other columns must be equal as strings.

  Args:
    a, b: the tables (e.g. from :func:`ccmc_jax.io.read_csv`).
    keys: columns identifying a row; each key must be unique in both tables.
    rtol, atol: one tolerance for every column (the other one, if None, at its default
      1e-5 / 1e-8). Both None: per column from ``tolerances``.
    names: how the two tables are called in error messages.
    tolerances: column -> ``ccmc_jax.tolerances.Tolerance`` (columns not listed get the
      defaults); informational columns are reported in ``info_diffs``, never in ``diffs``.
    raw: the two files read as text (optional): key cells are taken from it exactly.
  Returns:
    Report.
  Raises:
    CompareError: different column sets, an unknown or duplicate key, different row sets.
  """
  keys = list(keys)
  if not keys:
    raise CompareError('no key columns: pass --keys naming the columns that identify a row')
  if set(a.columns) != set(b.columns):
    only_a = sorted(map(str, set(a.columns) - set(b.columns)))
    only_b = sorted(map(str, set(b.columns) - set(a.columns)))
    raise CompareError(f'different columns: only in {names[0]}: {", ".join(only_a) or "-"}; '
                       f'only in {names[1]}: {", ".join(only_b) or "-"}')
  missing = [k for k in keys if k not in a.columns]
  if missing:
    raise CompareError(f'key column(s) {", ".join(map(str, missing))} not in the tables '
                       f'(columns: {", ".join(map(str, a.columns))})')
  uniform = rtol is not None or atol is not None
  if uniform:
    one = tol_lib.Tolerance(tol_lib.DEFAULT_RTOL if rtol is None else float(rtol),
                            tol_lib.DEFAULT_ATOL if atol is None else float(atol))
  ka, kb = _key_strings(a, keys, raw[0]), _key_strings(b, keys, raw[1])
  _check_unique(a, keys, ka, names[0])
  _check_unique(b, keys, kb, names[1])
  only_a, only_b = ~ka.isin(kb), ~kb.isin(ka)
  if only_a.any() or only_b.any():
    parts = []
    if only_a.any():
      parts.append(f'{int(only_a.sum())} only in {names[0]} '
                   f'(e.g. {_key_text(a, keys, np.flatnonzero(only_a), 1)})')
    if only_b.any():
      parts.append(f'{int(only_b.sum())} only in {names[1]} '
                   f'(e.g. {_key_text(b, keys, np.flatnonzero(only_b), 1)})')
    raise CompareError(f'different rows (keys {", ".join(keys)}): {"; ".join(parts)}')
  order = np.argsort(np.asarray(ka, dtype=object), kind='stable')
  a = a.iloc[order].reset_index(drop=True)
  b = b.iloc[kb.get_indexer(ka[order])].reset_index(drop=True)
  columns = [c for c in a.columns if c not in keys]
  applied = {c: one if uniform else (tolerances or {}).get(c, tol_lib.Tolerance())
             for c in columns}
  bad_cells, info_cells, max_abs, max_rel, max_used = [], [], {}, {}, {}
  for c in columns:
    x, y, t = a[c], b[c], applied[c]
    _check_same_kind(x, y, c, names)
    if len(x) and pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
      same, diff, rel, used = _numeric_close(x, y, t)
      both = np.isfinite(x.to_numpy(np.float64)) & np.isfinite(y.to_numpy(np.float64))
      max_abs[c] = float(np.max(diff[both])) if both.any() else 0.0
      max_rel[c] = float(np.max(rel[both])) if both.any() else 0.0
      max_used[c] = float(np.max(used[both])) if both.any() else 0.0
    else:
      xs, ys = x.astype(str).where(x.notna(), '<NA>'), y.astype(str).where(y.notna(), '<NA>')
      same = (xs == ys).to_numpy(bool)
      diff = np.full(len(x), np.nan)
    cells = info_cells if t.informational else bad_cells
    for i in np.flatnonzero(~same):
      cells.append({**{k: a[k].iloc[i] for k in keys}, 'column': c, 'a': x.iloc[i],
                    'b': y.iloc[i], 'abs_diff': diff[i]})
  position = {c: i for i, c in enumerate(columns)}

  def frame(cells):
    df = pd.DataFrame(cells, columns=keys + ['column', 'a', 'b', 'abs_diff'])
    if len(df):
      df = (df.assign(_col=df['column'].map(position))
            .sort_values(keys + ['_col'], kind='stable').drop(columns='_col')
            .reset_index(drop=True))
    return df

  return Report(keys, len(a), columns, frame(bad_cells), max_abs,
                one.rtol if uniform else None, one.atol if uniform else None, applied, max_rel,
                frame(info_cells), max_used)


def _meta_path(path):
  return os.path.splitext(path)[0] + '.meta.json'


def _column_list(keys):
  """Whether a sidecar's ``keys`` is a non-empty list of distinct, non-empty column names."""
  return (isinstance(keys, list) and bool(keys) and len(set(map(repr, keys))) == len(keys)
          and all(isinstance(k, str) and k for k in keys))


def read_sidecar(path, name=None) -> Optional[dict]:
  """The ``.meta.json`` sidecar of results CSV ``path`` as a dict; None when there is none.

  Raises:
    CompareError: (one line) unreadable, not JSON, not a JSON object, or a ``keys`` /
      ``tolerances`` field of the wrong shape.
  """
  meta_path = _meta_path(path)
  shown = _meta_path(name) if name else meta_path
  if not os.path.lexists(meta_path):
    return None
  try:
    meta = io.read_meta(meta_path)
  except io.UserError as e:  # io.read_meta's own one line for a corrupt or non-object sidecar
    raise CompareError(str(e).replace(meta_path, shown)) from None
  except json.JSONDecodeError as e:
    raise CompareError(f'{shown} is not valid JSON ({e.msg}, line {e.lineno} column '
                       f'{e.colno}): fix or delete the sidecar') from None
  except (UnicodeDecodeError, ValueError) as e:
    raise CompareError(f'{shown} is not valid JSON ({type(e).__name__}): fix or delete the '
                       f'sidecar') from None
  except OSError as e:
    raise CompareError(f'{shown} cannot be read ({e.strerror or e})') from None
  if meta is None:
    return None
  if not isinstance(meta, dict):
    raise CompareError(f'{shown} holds a JSON {type(meta).__name__}, not an object: fix or '
                       f'delete the sidecar')
  keys = meta.get('keys')
  if keys is not None and not _column_list(keys):
    raise CompareError(f'{shown}: "keys" is not a list of column names ({keys!r:.60}; allowed: '
                       f'a non-empty list of distinct non-empty strings)')
  if meta.get('tolerances') is not None:
    try:
      tol_lib.parse(meta['tolerances'])
    except ValueError as e:
      raise CompareError(f'{shown}: {e}') from None
  return meta


def read_table(path, name=None):
  """A results CSV as (frame, the same file as text) for :func:`compare_frames`.

  Raises:
    CompareError: (one line) a folder, missing, unreadable, empty, not a CSV, or a header
      naming a column twice.
  """
  shown = name or path
  if os.path.isdir(path):
    raise CompareError(f'{shown} is a folder, not a CSV file (give two files or two folders)')
  if os.path.exists(path) and not os.path.isfile(path):
    raise CompareError(f'{shown} is not a regular file (a device, pipe or socket)')
  try:
    frame = io.read_csv(path)
    with open(path, newline='', encoding='utf-8') as f:
      reader = csv.reader(f)
      header = next(reader, [])
      for row in reader:  # pandas would make extra fields an index, fill missing ones: NaN
        if row and len(row) != len(header):
          raise CompareError(f'{shown} is not a readable CSV (line {reader.line_num} has '
                             f'{len(row)} fields, the header {len(header)})')
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
  except io.UserError as e:
    raise CompareError(str(e).replace(path, shown)) from None
  except (ValueError, csv.Error, pd.errors.ParserError) as e:  # UnicodeDecodeError included
    raise CompareError(f'{shown} is not a readable CSV ({str(e).splitlines()[0][:120]})') from None
  except OSError as e:
    raise CompareError(f'{shown} cannot be read ({e.strerror or e})') from None
  seen = set()
  for column in header:
    if column in seen:
      raise CompareError(f'{shown}: the header names column {column!r} twice')
    seen.add(column)
  return frame, raw


def default_keys(path, frame, meta=None) -> list:
  """Keys from the ``keys`` list of ``<path minus .csv>.meta.json`` (or ``meta``), else
  :func:`infer_keys`."""
  meta = read_sidecar(path) if meta is None else meta
  keys = (meta or {}).get('keys')
  if isinstance(keys, list) and keys:
    return [str(k) for k in keys]
  return infer_keys(frame)


def _table_name(path):
  return os.path.splitext(os.path.basename(path))[0]


def _flags_hint(meta_a, meta_b):
  """' (made with other flags: --L_sweep, ...)' when both sidecars record flags that differ."""
  fa, fb = (m.get('flags') if isinstance(m, dict) else None for m in (meta_a, meta_b))
  if not isinstance(fa, dict) or not isinstance(fb, dict):
    return ''
  neutral = {'results_dir', 'figures_dir', 'resume', 'plot_only'}
  changed = sorted(k for k in set(fa) | set(fb) if k not in neutral and fa.get(k) != fb.get(k))
  if not changed:
    return ''
  shown = ', '.join(f'--{k}={fa.get(k)} vs {fb.get(k)}' for k in changed[:4])
  return f' (the two were made with other flags: {shown}{", ..." if len(changed) > 4 else ""})'


def compare_files(path_a, path_b, keys: Optional[Sequence[str]] = None, rtol=None, atol=None,
                  names=None) -> Report:
  """Read two CSVs and :func:`compare_frames` them (A is the reference).

  Keys: ``keys``, else A's sidecar, else B's, else inferred from A. Tolerances: ``rtol`` /
  ``atol`` for every column when given, else A's sidecar's ``tolerances``, else B's, else
  ``ccmc_jax.tolerances.TABLES`` for A's table name, else the defaults.

  Raises:
    CompareError: (one line) the two cannot be compared.
  """
  names = names or (path_a, path_b)
  (a, raw_a), (b, raw_b) = read_table(path_a, names[0]), read_table(path_b, names[1])
  meta_a, meta_b = read_sidecar(path_a, names[0]), read_sidecar(path_b, names[1])
  if not keys:
    sidecar = next(((m['keys'], n) for m, n in ((meta_a, names[0]), (meta_b, names[1]))
                    if m and m.get('keys')), None)
    if sidecar is not None:
      keys, name = sidecar
      missing = [k for k in keys if k not in a.columns]
      if missing:  # name the sidecar the keys came from
        columns = ', '.join(map(str, a.columns))
        raise CompareError(f'{_meta_path(name)}: "keys" names column(s) {", ".join(missing)} '
                           f'that the tables do not have (columns: {columns})')
    else:
      keys = tol_lib.KEYS.get(_table_name(path_a)) or infer_keys(a)
  recorded = next((m['tolerances'] for m in (meta_a, meta_b)
                   if m and m.get('tolerances') is not None), None)
  tolerances = (tol_lib.parse(recorded) if recorded is not None
                else tol_lib.parse(tol_lib.for_table(_table_name(path_a)) or {}))
  try:
    return compare_frames(a, b, keys, rtol, atol, names, tolerances, (raw_a, raw_b))
  except CompareError as e:
    hint = _flags_hint(meta_a, meta_b) if str(e).startswith('different') else ''
    raise CompareError(f'{e}{hint}') from None


def _csv_names(folder):
  return sorted(f for f in os.listdir(folder)
                if f.endswith('.csv') and not f.startswith('.') and
                os.path.isfile(os.path.join(folder, f)))


def compare_dirs(dir_a, dir_b, keys=None, rtol=None, atol=None, shown_a=None, out=print) -> int:
  """Compare every results CSV that two folders both hold; print one block per table and a
  final line. Returns the exit status (0 agree, 1 differ, 2 some table not comparable)."""
  shown_a = shown_a or dir_a
  for d, shown in ((dir_a, shown_a), (dir_b, dir_b)):
    if not os.path.isdir(d):
      raise CompareError(f'{shown} is not a folder')
  names_a, names_b = _csv_names(dir_a), _csv_names(dir_b)
  common = [f for f in names_a if f in names_b]
  if not common:
    raise CompareError(f'{shown_a} and {dir_b} hold no results CSV of the same name')
  status = {}
  for f in common:
    pa, pb = os.path.join(dir_a, f), os.path.join(dir_b, f)
    try:
      report = compare_files(pa, pb, keys, rtol, atol,
                             names=(os.path.join(shown_a, f), pb))
    except CompareError as e:
      out(f'{f}: error: {e}', file=sys.stderr)
      status[f] = 2
      continue
    if not report.agree:
      out(report.table())
    out(f'{f}: {report.summary()}')
    if report.info_summary():
      out(f'{f}: {report.info_summary()}')
    status[f] = 0 if report.agree else 1
  for only, here, there in ((sorted(set(names_a) - set(names_b)), shown_a, dir_b),
                            (sorted(set(names_b) - set(names_a)), dir_b, shown_a)):
    if only:
      out(f'not compared: {len(only)} CSV(s) in {here} only (not in {there}): '
          f'{", ".join(only)}')
  bad = {f for f, s in status.items() if s}
  code = max(status.values())
  what = 'the recorded per-column tolerances' if rtol is None and atol is None else (
      f'rtol={tol_lib.DEFAULT_RTOL if rtol is None else rtol:g} '
      f'atol={tol_lib.DEFAULT_ATOL if atol is None else atol:g}')
  if code == 0:
    out(f'agree: all {len(common)} tables within {what}')
  else:
    failed = {f for f, st in status.items() if st == 2}
    if failed:
      out(f'error: {len(failed)} of {len(common)} tables could not be compared '
          f'({", ".join(sorted(failed))}); {len(bad - failed)} differ beyond {what}')
    else:
      out(f'differ: {len(bad)} of {len(common)} tables ({", ".join(sorted(bad))}) differ '
          f'beyond {what}')
  return code


def _git(cwd, *args, text=True):
  return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=text, timeout=60)


def _git_root():
  """The top of the git checkout holding this package (else the current folder's), or None."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for start in (here, os.getcwd()):
    try:
      r = _git(start, 'rev-parse', '--show-toplevel')
    except (OSError, subprocess.SubprocessError):
      return None
    if r.returncode == 0 and os.path.isdir(os.path.join(r.stdout.strip(), 'ccmc_jax')):
      return r.stdout.strip()
  return None


def check_rev(rev):
  """A git revision given by the user is never passed to git as an option."""
  if not isinstance(rev, str) or rev.startswith('-') or not rev.strip():
    raise CompareError(f'--rev={rev} is invalid: allowed values are a git revision (a commit, '
                       f'branch or tag, e.g. HEAD), not an option')


def export_reference(rev, dest, folder='results'):
  """Write the results CSVs and sidecars of ``rev:<folder>/`` (the committed reference) into
  ``dest``. Returns the repository root.

  Raises:
    CompareError: (one line) no git checkout of ccmc-jax, unknown revision, no results there.
  """
  check_rev(rev)
  root = _git_root()
  if root is None:
    raise CompareError('--reference needs a git checkout of ccmc-jax (the reference is its '
                       'committed results/); elsewhere compare two folders: python -m '
                       'ccmc_jax.compare REFERENCE_DIR RERUN_DIR')
  listing = _git(root, 'ls-tree', '--name-only', f'{rev}:{folder}')
  if listing.returncode:
    raise CompareError(f'--rev={rev}: no {folder}/ at that revision of {root} '
                       f'({(listing.stderr.strip().splitlines() or ["?"])[-1]})')
  for f in listing.stdout.split():
    if f.endswith('.csv') or f.endswith('.meta.json'):
      blob = _git(root, 'show', f'{rev}:{folder}/{f}', text=False)
      if blob.returncode == 0:
        with open(os.path.join(dest, f), 'wb') as out:
          out.write(blob.stdout)
  return root


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


def _print(*args, file=None):
  print(*args, file=file or sys.stdout)


def main(argv=None) -> int:
  parser = _Parser(prog='python -m ccmc_jax.compare', description=__doc__.split('\n\n')[0],
                   epilog=__doc__.split('\n\n', 1)[1],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('a', nargs='?', help='reference: a results CSV or a folder of them '
                      '(with --reference: the rerun folder, default results)')
  parser.add_argument('b', nargs='?', help='rerun: a results CSV or a folder of them')
  parser.add_argument('--reference', action='store_true',
                      help='compare folder A (default results) with the results/ committed in '
                           'git (--rev, default HEAD) of this checkout')
  parser.add_argument('--rev', default='HEAD', help='git revision of the reference (--reference)')
  parser.add_argument('--rtol', type=_nonneg_float, default=None,
                      help='one relative tolerance for every column (default: per column, '
                           'recorded in the sidecars)')
  parser.add_argument('--atol', type=_nonneg_float, default=None,
                      help='one absolute tolerance for every column (default: per column)')
  parser.add_argument('--keys', default=None,
                      help='comma-separated key columns, e.g. K,L,n,trial (default: from the '
                           'meta sidecar of A, else its leading non-float columns)')
  args = parser.parse_args(argv)
  keys = [] if args.keys is None else [k.strip() for k in args.keys.split(',')]
  try:
    if args.keys is not None and not all(keys):
      raise CompareError(f'--keys={args.keys} names an empty column: allowed values are '
                         f'comma-separated column names, e.g. K,L,n,trial (omit --keys to use '
                         f'the sidecar\'s keys)')
    if args.reference:
      check_rev(args.rev)
    folders = args.reference or (args.a and os.path.isdir(args.a) and args.b
                                 and os.path.isdir(args.b))
    if keys and folders:
      raise CompareError(f'--keys={args.keys} names the key columns of one table: give two '
                         f'CSVs (folders use each sidecar\'s keys)')
    if args.reference:
      if args.b is not None:
        raise CompareError('--reference takes one folder (the rerun), compared with the '
                           f'committed results/; got {args.a} and {args.b}')
      rerun = args.a or 'results'
      if not os.path.isdir(rerun):
        raise CompareError(f'{rerun} is not a folder (give the --results_dir of the rerun)')
      with tempfile.TemporaryDirectory(prefix='ccmc_reference_') as ref:
        export_reference(args.rev, ref)
        return compare_dirs(ref, rerun, keys, args.rtol, args.atol,
                            shown_a=f'{args.rev}:results', out=_print)
    if args.a is None or args.b is None:
      raise CompareError('give two results CSVs, two folders, or --reference [FOLDER]')
    if os.path.isdir(args.a) and os.path.isdir(args.b):
      return compare_dirs(args.a, args.b, keys, args.rtol, args.atol, out=_print)
    report = compare_files(args.a, args.b, keys, args.rtol, args.atol)
  except (io.UserError, CompareError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except OSError as e:
    print(f'error: {e.filename or ""} {e.strerror or e}'.replace('error:  ', 'error: '),
          file=sys.stderr)
    return 2
  if not report.agree:
    print(report.table())
  print(report.summary())
  if report.info_summary():
    print(report.info_summary())
  return 0 if report.agree else 1


if __name__ == '__main__':
  sys.exit(main())
