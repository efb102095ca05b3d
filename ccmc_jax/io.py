"""Results files: atomic long-format CSVs, a metadata sidecar, and validated reading.

The only module of ``ccmc_jax`` that touches files; the model, samplers and fits never do.
"""
from __future__ import annotations

import errno
import functools
import hashlib
from io import StringIO as _StringIO
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

import jax
import numpy as np
import optax
import pandas as pd

from ccmc_jax.errors import UserError  # re-exported: io.UserError

FLOAT_FORMAT = '%.9g'  # float32 round-trips; identical bytes for identical numbers.


class ResultsError(UserError):
  """A results CSV that cannot be used (missing, malformed, wrong columns)."""


def write_error(path, error: OSError):
  """The one-line message of an OSError met writing ``path`` (a full disk said so plainly)."""
  if error.errno in (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC)):
    return f'no space left on device writing {path}'
  return f'cannot write {path} ({error.strerror or error})'


def stage(path, write, mode='w'):
  """Write a uniquely named temporary file next to ``path`` through ``write(file)`` and return
  its name (to be renamed onto ``path``). A failure leaves no temporary file and raises
  ResultsError with one line (``no space left on device writing <path>`` for a full disk)."""
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    try:
      os.makedirs(folder, exist_ok=True)
    except FileExistsError:  # a file where the folder should be: say that, not "File exists"
      raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder) from None
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp')
    with os.fdopen(fd, mode, **({} if 'b' in mode else {'newline': ''})) as f:
      write(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary shared files
    staged, tmp = tmp, None
    return staged
  except OSError as e:
    raise ResultsError(write_error(path, e)) from None
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)


def replace(tmp, path):
  """Rename a staged temporary file onto ``path`` (removing it, with a one-line error, if the
  rename fails)."""
  try:
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise ResultsError(write_error(path, e)) from None


def atomic_write(path, write, mode='w'):
  """Write ``path`` through a temporary file in the same folder and a rename, so a reader (or an
  interrupted run) never sees a half-written file and a failed write (a full disk) leaves the
  previous file intact; errors are one-line ResultsErrors."""
  replace(stage(path, write, mode), path)


def atomic_write_texts(files):
  """Write each ``(label, path, text)`` of ``files`` as a group: every file is staged first, so a
  failure (one-line ResultsError starting with its ``label``, e.g. the flag that named the
  path) leaves none of them written; then each is renamed onto its path."""
  staged = []
  try:
    for label, path, text in files:
      try:
        staged.append((label, stage(path, lambda f, text=text: f.write(text)), path))
      except ResultsError as e:
        raise ResultsError(f'{label}: {e}') from None
    while staged:
      label, tmp, path = staged[0]
      try:
        replace(tmp, path)
      except ResultsError as e:
        raise ResultsError(f'{label}: {e}') from None
      staged.pop(0)
  finally:
    for _, tmp, _ in staged:
      if os.path.exists(tmp):
        os.unlink(tmp)


def atomic_write_text(path, text):
  """:func:`atomic_write` of a text."""
  atomic_write(path, lambda f: f.write(text))


def csv_text(df: pd.DataFrame):
  """A long-format results table as CSV text (deterministic float formatting)."""
  return df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator='\n')


def parse_csv_text(text):
  """The table a reader of ``text`` (from :func:`csv_text`) gets: what a resumed run sees."""
  if not text.strip():
    return pd.DataFrame()
  return pd.read_csv(_StringIO(text))


def stored_value(value):
  """``value`` as a CSV written by :func:`write_csv` stores it (floats rounded to FLOAT_FORMAT),
  for comparing a flag's value with the CSV's."""
  if isinstance(value, (float, np.floating)):
    return float(FLOAT_FORMAT % value)
  return value


def text_digest(text):
  """The sha256 of a text as written (UTF-8): the resume journal's record of a CSV."""
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def file_digest(path):
  """The sha256 of a file's bytes (None when it does not exist)."""
  try:
    with open(path, 'rb') as f:
      return hashlib.sha256(f.read()).hexdigest()
  except FileNotFoundError:
    return None


def write_csv(df: pd.DataFrame, path):
  """Atomically write a long-format results table (deterministic float formatting)."""
  atomic_write_text(path, csv_text(df))


# What each value check of :func:`read_csv` requires, in words, and the test of a value.
_VALUE_CHECKS = {
    'positive_int': ('a positive integer',
                     lambda v: np.isfinite(v) & (v >= 1) & (v == np.floor(v))),
    'nonnegative_int': ('an integer >= 0',
                        lambda v: np.isfinite(v) & (v >= 0) & (v == np.floor(v))),
    'nonnegative': ('a finite number >= 0', lambda v: np.isfinite(v) & (v >= 0)),
    'probability': ('a number in [0, 1]', lambda v: np.isfinite(v) & (v >= 0) & (v <= 1)),
    'finite': ('a finite number', np.isfinite),
}


def read_csv(path, required=(), numeric=(), *, positive_int=(), nonnegative_int=(),
             nonnegative=(), probability=(), finite=(), nan_ok=(), nonempty=False, unique=()):
  """Read a results CSV, checking it exists, has the ``required`` columns and that the
  ``numeric`` ones hold finite-or-NaN numbers. Raises ResultsError with a one-line message.

  The value checks (each column is also read as numeric) let a figure refuse what it cannot
  draw instead of drawing it wrongly or crashing: ``positive_int`` (sizes and counts: K, L,
  n, T), ``nonnegative_int`` (indices: trial, seed, token), ``nonnegative`` (errors),
  ``probability`` (shares, probabilities: in [0, 1]) and ``finite``. NaN fails them, except in
  the ``nan_ok`` columns; ``nonempty`` refuses a header-only file; ``unique`` (the table's key
  columns) refuses two rows with the same key (a row written twice would be drawn twice). The
  message names the file, the column and the row (the file's line number, the header being
  line 1)."""
  if not os.path.isfile(path):
    raise ResultsError(f'results file {path} does not exist')
  try:
    df = pd.read_csv(path)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise ResultsError(f'{path} is not a readable CSV ({str(e).splitlines()[0]})') from None
  checks = {'positive_int': positive_int, 'nonnegative_int': nonnegative_int,
            'nonnegative': nonnegative, 'probability': probability, 'finite': finite}
  checked = [c for cols in checks.values() for c in cols]
  missing = [c for c in dict.fromkeys([*required, *checked, *unique]) if c not in df.columns]
  if missing:
    raise ResultsError(f'{path} lacks column(s) {", ".join(missing)} '
                       f'(has: {", ".join(map(str, df.columns))})')
  if nonempty and df.empty:
    raise ResultsError(f'{path} has no rows (only a header): rerun the experiment')
  for c in dict.fromkeys([*numeric, *checked]):
    values = pd.to_numeric(df[c], errors='coerce')
    bad = values.isna() & df[c].notna()
    if bad.any():
      raise ResultsError(f'{path}: column {c} has a non-numeric value {df[c][bad].iloc[0]!r} '
                         f'(row {int(np.flatnonzero(bad)[0]) + 2})')
    df[c] = values
  for kind, cols in checks.items():
    words, test = _VALUE_CHECKS[kind]
    for c in cols:
      v = df[c].to_numpy(np.float64)
      bad = ~test(v) & ~(np.isnan(v) & (c in nan_ok))
      if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ResultsError(f'{path}: column {c} has {v[i]:g} at row {i + 2}: the figure '
                           f'needs {words}{"" if c in nan_ok else " (no NaN)"}')
  if unique:
    check_unique(path, df, list(unique))
  return df


def check_unique(path, df, keys):
  """ResultsError naming the first key of ``keys`` that two rows of ``df`` share."""
  repeat = df.duplicated(keys, keep='first').to_numpy()
  if repeat.any():
    i = int(np.flatnonzero(repeat)[0])
    key = df[keys].iloc[i]
    first = int(np.flatnonzero((df[keys] == key).all(axis=1) |
                               (df[keys].isna() & key.isna()).all(axis=1))[0])
    shown = ', '.join(f'{c}={v}' for c, v in key.items())
    raise ResultsError(f'{path}: row {i + 2} repeats the key {shown} of row {first + 2} '
                       f'({int(repeat.sum())} repeated row(s); the columns {", ".join(keys)} '
                       f'must identify a row): rerun the experiment')


# Tracked outputs: rewriting them does not make the code dirty (run_all.sh regenerates the
# results, the figures, the claims table of docs/claims.md and the README's counts line).
OUTPUT_DIRS = ('results', 'figures', 'README.md', 'docs/claims.md')


@functools.lru_cache(maxsize=None)
def git_commit(here=None):
  """The git commit of the code ('unknown' outside git), '+dirty' if tracked files other than the
  outputs (``OUTPUT_DIRS``) differ from it. Computed once per process (two ``git``
  subprocesses), so the record is the state of the code when the run started. ``here``: a
  folder of the checkout (default: this package's)."""
  here = here or os.path.dirname(os.path.abspath(__file__))
  try:
    run = lambda *a: subprocess.run(['git', *a], cwd=here, capture_output=True, text=True,
                                    timeout=10).stdout.strip()
    commit = run('rev-parse', 'HEAD') or 'unknown'
    exclude = [f':(top,exclude){d}' for d in OUTPUT_DIRS]
    dirty = run('status', '--porcelain', '--untracked-files=no', '--', ':(top)', *exclude)
    return commit + ('+dirty' if dirty else '')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


def physical_memory():
  """This machine's physical memory in bytes (None when the OS does not say)."""
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def check_memory(terms, error=ValueError, fraction=0.7, total=None):
  """Raise ``error`` (one line) when the estimated peak of ``terms`` (``ccmc_jax.memory``
  :class:`~ccmc_jax.memory.Term` s) exceeds ``fraction`` of physical memory (``total`` bytes,
  default this machine's); checked before any work or file. The line names the flags of the
  largest term, largest factor first, and what to lower:
  ``--K=10000 with --seeds=200 needs about 373 GiB (the K x K chains ...)``."""
  from ccmc_jax import memory  # pylint: disable=import-outside-toplevel
  total = physical_memory() if total is None else total
  need = memory.peak(terms)
  if total is None or need <= fraction * total:
    return
  term = max(terms, key=lambda t: t.bytes)
  flags = memory.driving_flags(term)
  lead = ' with '.join(f'--{name}={value}' for name, value, _ in flags[:2])
  lower = ' or '.join(f'--{name}' for name, _, _ in flags)
  raise error(f'{lead} needs about {format_size(need)} ({term.what}), more than '
              f'{fraction:.0%} of this machine\'s {format_size(total)}: lower {lower}')


def out_of_memory(exc, terms=None):
  """One line for an allocation failure raised during a run (numpy's MemoryError, XLA's
  ``RESOURCE_EXHAUSTED``), or None when ``exc`` is not one. With the run's memory ``terms``
  (``ccmc_jax.memory``), the line names the estimate and the flags that drive it."""
  text = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
  if not (isinstance(exc, MemoryError) or 'RESOURCE_EXHAUSTED' in text
          or 'out of memory' in text.lower()):
    return None
  match = re.search(r'allocat\w* (\d+) bytes', text)
  what = (f'{format_size(int(match.group(1)))} could not be allocated' if match
          else 'an allocation failed')
  lower = 'lower the sizes of the run (K, n, T, trials, seeds)'
  if terms:
    from ccmc_jax import memory  # pylint: disable=import-outside-toplevel
    flags = memory.driving_flags(max(terms, key=lambda t: t.bytes))
    lead = ' with '.join(f'--{name}={value}' for name, value, _ in flags[:2])
    what += f' (the run was estimated at {format_size(memory.peak(terms))}, mostly {lead})'
    lower = f'lower {" or ".join(f"--{name}" for name, _, _ in flags)}, or free memory'
  return f'out of memory: {what}; {lower}; the results CSV holds every setting finished so far'


def format_size(nbytes):
  """Bytes in words: '3.2 GiB', '320 GiB', '48 MiB'."""
  for unit, scale in (('TiB', 2 ** 40), ('GiB', 2 ** 30), ('MiB', 2 ** 20)):
    if nbytes >= scale or unit == 'MiB':
      value = nbytes / scale
      return f'{value:.3g} {unit}' if value < 1000 else f'{value:,.0f} {unit}'
  return f'{nbytes} B'


@functools.lru_cache(maxsize=None)
def _environment():
  return {
      'python': sys.version.split()[0], 'jax': jax.__version__, 'optax': optax.__version__,
      'numpy': np.__version__, 'pandas': pd.__version__, 'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()], 'platform': platform.platform(),
      'git_commit': git_commit(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def environment():
  """Versions and machine facts for the metadata sidecar (computed once per process: every
  sidecar rewrite after the first costs no subprocess)."""
  return dict(_environment())


NULL_NOTE = ('not a finite number (JSON has no Infinity or NaN), e.g. a ratio whose '
             'denominator is 0: written as null')


def json_safe(value, where='', nulls=None):
  """``value`` with every non-finite float (Python or NumPy, in dicts, lists and tuples)
  replaced by None; ``nulls`` collects ``{path: 'inf' | '-inf' | 'nan'}`` of the replaced
  ones (``summary.ratio``, ``values[2]``)."""
  if isinstance(value, dict):
    return {k: json_safe(v, f'{where}.{k}' if where else str(k), nulls)
            for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v, f'{where}[{i}]', nulls) for i, v in enumerate(value)]
  if isinstance(value, (float, np.floating)) and not np.isfinite(value):
    if nulls is not None:
      nulls[where] = str(float(value))
    return None
  return value


def write_meta(path, flags: dict, **extra):
  """Atomically write the ``<name>.meta.json`` sidecar: flags, versions, commit and extras.

  The file is strict JSON: a non-finite number (``inf``/``nan``, which ``json`` would write as
  ``Infinity``/``NaN``) is written as ``null``, and ``null_values`` names each one with its
  value and why (:data:`NULL_NOTE`)."""
  nulls = {}
  meta = json_safe({'flags': flags, 'environment': environment(), **extra}, nulls=nulls)
  if nulls:
    meta['null_values'] = {'why': NULL_NOTE, 'values': nulls}
  atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True, default=str,
                                     allow_nan=False) + '\n')


def read_meta(path):
  """Read a metadata sidecar (a JSON object); None when absent. A sidecar that is not a JSON
  object (corrupt, truncated, binary, a list) raises ResultsError with one line naming it."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, 'rb') as f:
      meta = json.loads(f.read().decode('utf-8'))
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    why = getattr(e, 'strerror', None) or (str(e).splitlines() or [type(e).__name__])[0]
    raise ResultsError(f'{path} is not a readable metadata sidecar ({why})') from None
  if not isinstance(meta, dict):
    raise ResultsError(f'{path} is not a metadata sidecar (a JSON {type(meta).__name__}, '
                       f'not an object)')
  return meta


def lock(path, what=None):
  """Take an exclusive lock on the file ``path`` (created if needed) for as long as the
  returned descriptor is open (the kernel releases it when the process ends, however it ends).
  Raises ResultsError with one line, naming ``what`` (default: the lock file), when another
  run holds it."""
  import fcntl  # pylint: disable=import-outside-toplevel
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # read-only: any user may lock
  except OSError as e:
    raise ResultsError(write_error(path, e)) from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return fd  # a file system without locks (some network mounts): run unlocked
    os.close(fd)
    raise ResultsError(f'{what or path} is being written by another run now (lock {path}): '
                       f'wait for it to end or give another --results_dir') from None
  try:
    same = os.path.samestat(os.fstat(fd), os.stat(path))
  except OSError:
    same = False
  if not same:  # removed (unlock) by a refused run after we opened it: lock the new file
    os.close(fd)
    return lock(path, what)
  return fd


def unlock(fd, path=None):
  """Release a lock of :func:`lock`; with ``path``, remove the lock file first (a run that
  created it and wrote nothing leaves no trace; :func:`lock` re-checks the file it locked)."""
  if path is not None:
    try:
      os.unlink(path)
    except OSError:
      pass
  os.close(fd)
