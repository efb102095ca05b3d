"""Results files: atomic long-format CSVs, a metadata sidecar, and validated reading.

The only module of ``ccmc_jax`` that touches files; the model, samplers and fits never do.
"""
from __future__ import annotations

import functools
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


def atomic_write_text(path, text):
  """Write ``text`` to ``path`` through a temporary file in the same folder and a rename,
  so a reader (or an interrupted run) never sees a half-written file."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path), suffix='.tmp')
  try:
    with os.fdopen(fd, 'w', newline='') as f:
      f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary shared files
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_csv(df: pd.DataFrame, path):
  """Atomically write a long-format results table (deterministic float formatting)."""
  atomic_write_text(path, df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator='\n'))


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


# Tracked outputs: rewriting them does not make the code dirty (run_all.sh regenerates the
# results, the figures and the README's claims table).
OUTPUT_DIRS = ('results', 'figures', 'README.md')


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
  """Read a metadata sidecar; None when absent."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)
