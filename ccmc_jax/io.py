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
    os.makedirs(folder, exist_ok=True)
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


def read_csv(path, required=(), numeric=()):
  """Read a results CSV, checking it exists, has the ``required`` columns and that the
  ``numeric`` ones hold finite-or-NaN numbers. Raises ResultsError with a one-line message."""
  if not os.path.isfile(path):
    raise ResultsError(f'results file {path} does not exist')
  try:
    df = pd.read_csv(path)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise ResultsError(f'{path} is not a readable CSV ({str(e).splitlines()[0]})') from None
  missing = [c for c in required if c not in df.columns]
  if missing:
    raise ResultsError(f'{path} lacks column(s) {", ".join(missing)} '
                       f'(has: {", ".join(map(str, df.columns))})')
  for c in numeric:
    values = pd.to_numeric(df[c], errors='coerce')
    bad = values.isna() & df[c].notna()
    if bad.any():
      raise ResultsError(f'{path}: column {c} has a non-numeric value {df[c][bad].iloc[0]!r} '
                         f'(row {int(np.flatnonzero(bad)[0]) + 2})')
    df[c] = values
  return df


OUTPUT_DIRS = ('results', 'figures')  # tracked outputs: rewriting them does not make code dirty


@functools.lru_cache(maxsize=None)
def git_commit():
  """The git commit of the code ('unknown' outside git), '+dirty' if tracked files other than the
  outputs (``results/``, ``figures/``) differ from it. Computed once per process (two ``git``
  subprocesses), so the record is the state of the code when the run started."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    run = lambda *a: subprocess.run(['git', *a], cwd=here, capture_output=True, text=True,
                                    timeout=10).stdout.strip()
    commit = run('rev-parse', 'HEAD') or 'unknown'
    exclude = [f':(top,exclude){d}' for d in OUTPUT_DIRS]
    dirty = run('status', '--porcelain', '--untracked-files=no', '--', ':(top)', *exclude)
    return commit + ('+dirty' if dirty else '')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


def check_memory(flag, value, bytes_needed, error=ValueError, fraction=0.7):
  """Raise ``error`` (one line naming ``--flag``) when an estimated working set exceeds
  ``fraction`` of this machine's physical memory; checked before allocating anything."""
  try:
    total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return
  if bytes_needed > fraction * total:
    raise error(f'--{flag}={value} needs about {bytes_needed / 2**30:.1f} GiB, more than '
                f'{fraction:.0%} of this machine\'s {total / 2**30:.1f} GiB: lower it')


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


def write_meta(path, flags: dict, **extra):
  """Atomically write the ``<name>.meta.json`` sidecar: flags, versions, commit and extras."""
  meta = {'flags': flags, 'environment': environment(), **extra}
  atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True, default=str) + '\n')


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
  return fd
