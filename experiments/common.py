"""Shared plumbing of the experiment scripts: flags every script has, flag checks with one-line
errors, resumable atomic results, metadata sidecars, progress lines and figure saving.

The experiments import ``ccmc_jax``; ``ccmc_jax`` never imports this.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import glob
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import pandas as pd

from ccmc_jax import io
from ccmc_jax import memory
from ccmc_jax import sharding
from ccmc_jax import tolerances
from experiments.plots import style

flags.DEFINE_integer('seed', 0, 'Root PRNG seed; trial i uses fold_in(setting key, i).')
flags.DEFINE_string('results_dir', 'results', 'Folder for the CSV results and .meta.json.')
flags.DEFINE_string('figures_dir', 'figures', 'Folder for the PNG and PDF figures.')
flags.DEFINE_bool('quick', False, 'Small, fast smoke-test settings (overrides the defaults).')
flags.DEFINE_bool('resume', False, 'Keep the settings that an interrupted run with the same '
                  'flags wrote (CSVs unchanged since) and compute only the rest.')
flags.DEFINE_bool('plot_only', False, 'Only re-render the figure from the existing CSV.')

FLAGS = flags.FLAGS
COMMON_FLAGS = ('seed', 'results_dir', 'figures_dir', 'quick', 'resume', 'plot_only')
# Flags that do not change the numbers in a results CSV (ignored when checking --resume).
NEUTRAL_FLAGS = ('results_dir', 'figures_dir', 'resume', 'plot_only')


class FlagError(ValueError):
  """A bad flag value: reported as one line naming the flag and its allowed values."""


class CheckFailed(Exception):
  """A check that an experiment exists to make (an equivalence, a bound) failed, or gave NaN:
  reported as one ``FAILED: ...`` line after the results and figure are written; exit 1."""


def _elements(name, value):
  """The values of a flag: its elements for a list flag (an empty list is refused)."""
  if not isinstance(value, (list, tuple)):
    return [value]
  if not value:
    raise FlagError(f'--{name} is empty: give at least one value')
  return value


def check_int(name, value, lo, hi=None):
  """Require ``lo <= value <= hi`` for an int flag (or every element of a list flag; an empty
  list is refused)."""
  for v in _elements(name, value):
    try:
      ok = int(v) == float(v) and int(v) >= lo and (hi is None or int(v) <= hi)
    except (TypeError, ValueError):
      ok = False
    if not ok:
      allowed = f'an integer >= {lo}' if hi is None else f'an integer in [{lo}, {hi}]'
      raise FlagError(f'--{name}={v} is invalid: allowed values are {allowed}')


def check_float(name, value, lo=None, hi=None, lo_open=False):
  """Require a finite float in ``[lo, hi]`` (``(lo, hi]`` if ``lo_open``), for a float flag or
  every element of a list flag (an empty list is refused)."""
  for v in _elements(name, value):
    try:
      v = float(v)
    except (TypeError, ValueError):
      raise FlagError(f'--{name}={v} is invalid: allowed values are finite numbers') from None
    low_ok = lo is None or (v > lo if lo_open else v >= lo)
    if not (math.isfinite(v) and low_ok and (hi is None or v <= hi)):
      rng = f'{"(" if lo_open else "["}{"-inf" if lo is None else lo}, {"inf" if hi is None else hi}]'
      raise FlagError(f'--{name}={v} is invalid: allowed values are finite numbers in {rng}')


def check_choice(name, value, choices):
  """Require ``value`` (or each element) to be one of ``choices``."""
  for v in value if isinstance(value, (list, tuple)) else [value]:
    if v not in choices:
      raise FlagError(f'--{name}={v} is invalid: allowed values are {", ".join(choices)}')


MAX_MATRIX_K = 12  # an annotated K x K heat map stays legible up to here


def parse_W(name, values):
  """The K x K matrix of a list flag (e.g. --W): finite numbers, a perfect-square count (row-major),
  K in [2, 12]."""
  check_float(name, values)
  K = math.isqrt(len(values))
  if K * K != len(values) or not 2 <= K <= MAX_MATRIX_K:
    raise FlagError(f'--{name} has {len(values)} numbers: allowed values are K*K '
                    f'numbers (row-major) for K in [2, {MAX_MATRIX_K}], e.g. 9 for K = 3')
  return np.array([float(v) for v in values], np.float64).reshape(K, K)


def parse_X(name, values, K):
  """The prompt of a list flag (e.g. --X): 0-indexed tokens in [0, K-1], at least one."""
  if not values:
    raise FlagError(f'--{name} is empty: allowed values are 0-indexed tokens in '
                    f'[0, {K - 1}], e.g. 0,1,0')
  check_int(name, values, 0, K - 1)
  return np.array([int(v) for v in values], np.int32)


def check_writable_dir(name, path, create=False):
  """Require ``path`` to be (creatable as) a writable folder. By default nothing is created
  (a refused run leaves no folder behind; the first file written makes it): the folder is
  checked, or where it does not exist yet its nearest existing parent. ``create=True``: make
  it now."""
  if create:
    return _check_writable(name, path, path)
  probe_dir = os.path.abspath(path)
  while not os.path.exists(probe_dir):
    probe_dir = os.path.dirname(probe_dir)
  if not os.path.isdir(probe_dir):
    raise FlagError(f'--{name}={path} is not a writable folder ({probe_dir} is a file)')
  return _check_writable(name, path, probe_dir)


def _check_writable(name, path, folder):
  """FlagError unless ``folder`` (made if missing) takes a real write; names ``--name=path``."""
  where = '' if os.path.abspath(folder) == os.path.abspath(path) else f' in {folder}'
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise FlagError(f'--{name}={path} is not a writable folder ({e.strerror}{where})') from None
  if not os.access(folder, os.W_OK | os.X_OK):
    raise FlagError(f'--{name}={path} is not a writable folder (permission denied{where})')
  try:  # a real write: root passes os.access on /proc and on read-only mounts
    fd, probe = tempfile.mkstemp(prefix='.write_probe_', dir=folder)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise FlagError(f'--{name}={path} is not a writable folder ({e.strerror}{where})') from None


def check_one_corpus(corpus='corpus', corpus_file='corpus_file'):
  """A script with both flags: ``--corpus`` given together with ``--corpus_file`` is one line
  (the file would silently win)."""
  if FLAGS[corpus_file].value is not None and FLAGS[corpus].present:
    raise FlagError(f'--{corpus}={FLAGS[corpus].value} and --{corpus_file}='
                    f'{FLAGS[corpus_file].value} both choose the corpus: give one of them')


READ_BYTES_PER_BYTE = 6  # reading a file: its bytes, the decoded str (up to 4 bytes a char)


def read_corpus(memory_terms, corpus='corpus', corpus_file='corpus_file'):
  """The corpus text that ``--corpus_file`` (when given) or ``--corpus`` names. A file's size is
  checked against memory before it is read (``memory_terms(size, (flag, shown))`` gives the
  run's ``ccmc_jax.memory`` terms for a corpus of that many bytes); every corpus problem is one
  FlagError naming the flag that chose the corpus."""
  from ccmc_jax import text  # pylint: disable=import-outside-toplevel
  path = FLAGS[corpus_file].value
  try:
    if path is None:
      return text.read_kjv() if FLAGS[corpus].value == 'kjv' else text.read_python_docs()
    size = text.file_size(path)  # before reading it: a file too large is named
    named = f'{path} (a file of {io.format_size(size)})'
    check_memory(memory_terms(size, (corpus_file, named)) + [
        memory.Term(READ_BYTES_PER_BYTE * size, f'reading {path}', ((corpus_file, named, 0),))])
    return text.read_text_file(path)
  except text.TextError as e:
    raise FlagError(corpus_error(e, corpus, corpus_file)) from None


def corpus_error(e, corpus='corpus', corpus_file='corpus_file'):
  """A corpus problem (``ccmc_jax.text.TextError``) as one line naming the flag that chose the
  corpus (and the too-large setting, when there is one)."""
  msg, path = str(e), FLAGS[corpus_file].value
  if msg.startswith('--'):
    return msg
  if path is not None:
    return f'--{corpus_file}={path} {msg[len(path) + 1:] if msg.startswith(path) else msg}'
  return f'--{corpus}={FLAGS[corpus].value} {msg}'


_MEMORY_TERMS = []  # the run's estimate (check_memory), named when an allocation fails


def check_memory(terms, fraction=0.7):
  """Refuse settings whose estimated peak memory (``ccmc_jax.memory`` terms) exceeds
  ``fraction`` of physical memory: one line naming the flags that drive it. The terms are kept
  for the message of an allocation failure during the run."""
  _MEMORY_TERMS[:] = list(terms)
  io.check_memory(terms, FlagError, fraction)


def flag_values(names):
  """The values of the named flags, as a plain dict for the metadata sidecar."""
  return {n: FLAGS[n].value for n in list(names) + list(COMMON_FLAGS)}


def progress(msg, start=None):
  """A progress line on stderr: the message and the elapsed time."""
  check_interrupted()
  elapsed = '' if start is None else f' [{time.time() - start:6.1f} s]'
  print(f'{msg}{elapsed}', file=sys.stderr, flush=True)


class Results:
  """A long-format results table of a run, rewritten atomically whenever a setting finishes.

  Rows are sorted by ``keys`` on every write and kept as the CSV stores them (floats rounded
  to ``io.FLOAT_FORMAT``), so an interrupted-then-resumed run ends with exactly the bytes of an
  uninterrupted one. Adding rows whose keys are already present replaces those rows: a setting
  is never in the table twice.

  A table belongs to a :class:`Run` (its lock, sidecars and resume journal); one made on its
  own (``Results(name, keys, flags)``) is a run of one table, unlocked at :meth:`finish`.
  """

  def __init__(self, name, keys, flag_dict, resume=False, run=None):
    self.name, self.keys, self.flags = name, list(keys), flag_dict
    self.path = os.path.join(FLAGS.results_dir, f'{name}.csv')
    self.meta_path = os.path.join(FLAGS.results_dir, f'{name}.meta.json')
    self.frame = pd.DataFrame()
    self.start = time.time()
    self.run = run
    self._own_run = run is None
    if run is None:
      Run(flag_dict, [self], [name] if resume else [])

  def done(self, setting: dict) -> bool:
    """Whether the rows of this setting (a dict over some of the key columns) are present;
    float values are compared as the CSV stores them (``io.stored_value``)."""
    if self.frame.empty:
      return False
    mask = np.ones(len(self.frame), bool)
    for k, v in setting.items():
      mask &= (self.frame[k] == io.stored_value(v)).to_numpy()
    return bool(mask.any())

  def add(self, rows):
    """Add rows (a DataFrame, or a dict of columns) and rewrite the CSV atomically (inside
    ``run.unit()``: when the unit ends, with the unit's other tables). Rows of the table with
    the same keys as an added row are replaced."""
    check_interrupted()
    rows = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    rows = io.parse_csv_text(io.csv_text(rows))  # as stored: keys compare with the CSV's
    frame = self.frame
    if len(frame) and len(rows):
      old = pd.MultiIndex.from_frame(frame[self.keys])
      frame = frame[~old.isin(pd.MultiIndex.from_frame(rows[self.keys]))]
    frame = pd.concat([frame, rows], ignore_index=True) if len(frame) else rows
    self.frame = frame.sort_values(self.keys, kind='stable').reset_index(drop=True)
    self.run.changed(self)

  def write_meta(self, status, **extra):
    """The sidecar: flags, keys, status (and the run's resume journal for its main table)."""
    if self is self.run.main:
      extra['journal'] = dict(self.run.journal)
    io.write_meta(self.meta_path, self.flags, status=status, keys=self.keys, **extra)

  def finish(self, **extra):
    """Mark the results complete in the sidecar, with the wall time."""
    wall = time.time() - self.start
    with uninterrupted():
      self.write_meta('complete', rows=len(self.frame), wall_time_s=round(wall, 2),
                      tolerances=tolerances.for_table(self.name), **extra)  # used by compare
      self.run._wrote = True  # pylint: disable=protected-access
    if self._own_run:
      self.run.close()
    return wall


class Run(dict):
  """The results tables of one run (name -> :class:`Results`), written so that nothing is lost
  and nothing is silently wrong:

  * each table's name is locked (``results_dir/.<name>.lock``) for the whole run: a second
    run into the same results gets one line and writes nothing;
  * every sidecar (flags, status 'partial') is written before any work, so a run stopped at
    any moment can be resumed;
  * the main (first) table's sidecar keeps a journal: the sha256 of every table's CSV as last
    written. Tables written together (:meth:`unit`) are staged, journalled, then renamed, with
    SIGTERM/SIGINT deferred (:func:`uninterrupted`): a setting is in every table or in none.
    ``--resume`` keeps a table's rows only when the CSV is exactly what this run's flags wrote
    (same flags, same digest); anything else is one line and exit 2, never a silent mix.
  """

  def __init__(self, flag_dict, tables, resume=()):
    """``tables``: :class:`Results`, or (name, keys) pairs to make them; the first is the main
    one. ``resume``: the names of the tables whose rows to keep from a previous run."""
    tables = [t if isinstance(t, Results) else Results(*t, flag_dict, run=self) for t in tables]
    super().__init__((t.name, t) for t in tables)
    self.flags, self.main, self.journal = flag_dict, tables[0], {}
    self._unit, self._locks, self._wrote = None, [], False
    for t in tables:
      t.run = self
    # Folders this run creates (for the lock files), so that a refused run removes them again.
    self._made_dirs = sorted({d for t in tables for d in _missing_dirs(os.path.dirname(t.path))},
                             key=len, reverse=True)
    self._before, self._stale, self._touched = {}, [], False
    try:
      for t in tables:
        path = os.path.join(os.path.dirname(t.path), f'.{t.name}.lock')
        created = not os.path.exists(path)
        self._locks.append((io.lock(path, what=t.path), path if created else None))
      # What the folder held once it is ours (locked), so that a run refused or stopped before
      # it wrote any table leaves it as it found it (discard).
      self._before = {t.meta_path: _read_bytes(t.meta_path) for t in tables}
      if resume:
        self._resume([self[name] for name in resume])
      for t in tables:  # temporaries of a killed run: removed once this run writes (a --resume
        folder = os.path.dirname(t.path)  # has used its own by then), kept by a refused run
        self._stale += glob.glob(os.path.join(glob.escape(folder), f'.{t.name}.csv.*.tmp'))
      with uninterrupted():
        self._touched = True
        for t in tables:
          t.write_meta('partial')
    except BaseException:
      self.discard()
      raise

  def _resume(self, tables):
    """Load the rows of a previous run of the same flags (see the class doc)."""
    main = self.main
    meta = io.read_meta(main.meta_path)
    journal = None if meta is None else meta.get('journal')
    if journal is None:  # no sidecar, or one written without a journal (an older version)
      if os.path.isfile(main.path):
        why = 'is missing' if meta is None else 'has no resume journal (an older version)'
        raise FlagError(f'--resume: {main.meta_path} {why}, so {main.path} cannot be checked; '
                        f'rerun without --resume')
      return
    flags_then = meta.get('flags')
    if not isinstance(journal, dict) or not isinstance(flags_then, dict):
      raise io.ResultsError(f'{main.meta_path} is not a sidecar of this suite (no flags or '
                            f'journal object)')
    if not journal:  # stopped before anything was written: nothing to keep
      return
    old = {k: v for k, v in flags_then.items() if k not in NEUTRAL_FLAGS}
    new = {k: v for k, v in self.flags.items() if k not in NEUTRAL_FLAGS}
    if old != new:
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      raise FlagError(f'--resume: {main.path} was made with other flags '
                      f'({", ".join(changed)}); rerun without --resume')
    staged = meta.get('staged') if isinstance(meta.get('staged'), dict) else {}
    for t in tables:
      if t.name not in journal:
        continue
      tmp = os.path.join(os.path.dirname(t.path), os.path.basename(str(staged.get(t.name))))
      if io.file_digest(t.path) != journal[t.name] and io.file_digest(tmp) == journal[t.name]:
        io.replace(tmp, t.path)  # killed between the journal and this rename: complete it
      if io.file_digest(t.path) != journal[t.name]:
        raise FlagError(f'--resume: {t.path} is not what this run last wrote (changed or '
                        f'removed since, per the journal in {main.meta_path}); rerun without '
                        f'--resume')
      t.frame = io.read_csv(t.path, required=t.keys)
      self.journal[t.name] = journal[t.name]

  def changed(self, table):
    """A table's rows changed: write it now, or when the current unit ends."""
    if self._unit is not None:
      self._unit[table.name] = table
    else:
      self.commit([table])

  @contextlib.contextmanager
  def unit(self):
    """Adds inside the block are written together when it ends (and not at all if it is
    interrupted): a setting written to several tables, or by several adds, is complete in
    every table or absent from all."""
    if self._unit is not None:
      yield self
      return
    self._unit = {}
    try:
      yield self
      tables = list(self._unit.values())
    finally:
      self._unit = None
    self.commit(tables)

  def commit(self, tables):
    """Write ``tables``: stage every CSV, write the journal, then rename them all (signals
    deferred); each table's frame is then exactly what its CSV holds."""
    self._remove_stale()
    staged = []
    with uninterrupted():
      try:
        texts = {t.name: io.csv_text(t.frame) for t in tables}
        for t in tables:
          staged.append((io.stage(t.path, lambda f, x=texts[t.name]: f.write(x)), t.path))
          self.journal[t.name] = io.text_digest(texts[t.name])
        # Journal first, naming the staged files: a run killed (SIGKILL) before every rename
        # is done is completed by --resume.
        self.main.write_meta('partial', staged={t.name: os.path.basename(tmp)
                                                for t, (tmp, _) in zip(tables, staged)})
        while staged:
          io.replace(*staged[0])
          staged.pop(0)
      finally:
        for tmp, _ in staged:
          if os.path.exists(tmp):
            os.unlink(tmp)
      for t in tables:
        t.frame = io.parse_csv_text(texts[t.name])
    self._wrote = True

  def _remove_stale(self):
    """Remove the temporaries of a killed run (once this run writes, or ends well)."""
    while self._stale:
      try:
        os.unlink(self._stale.pop())
      except FileNotFoundError:
        pass

  def close(self):
    """Release the locks (the process's end releases them too)."""
    self._remove_stale()
    while self._locks:
      io.unlock(self._locks.pop()[0])

  def discard(self):
    """End a run that wrote no table (refused: another run holds a lock, a bad --resume, a model
    folder that cannot be used, an error before the first result; or stopped): its sidecars
    are put back as they were (or removed), the lock files and folders it created are removed,
    the locks released. The folder is left as the run found it. After a table was written,
    only the locks are released (the sidecars then say 'partial', for --resume)."""
    if self._wrote:
      self.close()
      return
    with uninterrupted():
      if self._touched:  # only a run holding every lock wrote the sidecars
        for path, before in self._before.items():
          if before is None:
            if os.path.exists(path):
              os.unlink(path)
          elif _read_bytes(path) != before:
            io.atomic_write(path, lambda f, b=before: f.write(b), mode='wb')
      while self._locks:
        io.unlock(*self._locks.pop())
      for folder in self._made_dirs:  # deepest first; one another run now uses is not empty
        try:
          os.rmdir(folder)
        except OSError:
          pass

  @contextlib.contextmanager
  def session(self):
    """``with run.session():`` the body of a run: :meth:`discard` if it raises, else
    :meth:`close`."""
    try:
      yield self
    except BaseException:
      self.discard()
      raise
    self.close()


def _missing_dirs(folder):
  """``folder`` and those of its parents that do not exist yet."""
  missing, folder = [], os.path.abspath(folder)
  while folder and not os.path.exists(folder):
    missing.append(folder)
    parent = os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  return missing


def _read_bytes(path):
  """The bytes of a file, None when there is none."""
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError:
    return None


_INTERRUPT = {'depth': 0, 'signal': None, 'received': None}


def check_interrupted():
  """Raise KeyboardInterrupt if SIGTERM/SIGINT arrived but its exception was swallowed.

  The handler raises in whatever Python code runs when the signal lands; inside a garbage
  collector or weakref callback (e.g. JAX's ``_xla_gc_callback``) Python prints "Exception
  ignored" and carries on. The signal is also recorded, and this re-raises it: called at every
  progress line, every table write and before a run reports success."""
  if _INTERRUPT['received'] is not None and not _INTERRUPT['depth']:
    raise KeyboardInterrupt(f'signal {_INTERRUPT["received"]}')


@contextlib.contextmanager
def uninterrupted():
  """Defer SIGTERM/SIGINT (as handled by :func:`run`) to the end of the block, so a group of
  writes (several CSVs and their journal, a figure) completes before the run stops."""
  _INTERRUPT['depth'] += 1
  try:
    yield
  finally:
    _INTERRUPT['depth'] -= 1
  if not _INTERRUPT['depth'] and _INTERRUPT['signal'] is not None:
    signum, _INTERRUPT['signal'] = _INTERRUPT['signal'], None
    raise KeyboardInterrupt(f'signal {signum}')


def save_figure(fig, name):
  """Save ``figures_dir/name.png`` and ``.pdf`` atomically (see ``plots.style.save``)."""
  with uninterrupted():
    return style.save(fig, FLAGS.figures_dir, name)


def csv_paths(*names):
  """``results_dir/<name>.csv`` for each name."""
  return tuple(os.path.join(FLAGS.results_dir, f'{name}.csv') for name in names)


def start(validate, flag_names):
  """The first steps of every run: check every flag (``validate()``, one-line errors before any
  work), set up JAX, and collect the flag values for the sidecars.

  Returns:
    (whatever ``validate`` returned, the flag dict).
  """
  checked = validate()
  setup_jax()
  return checked, flag_values(flag_names)


def run_and_plot(name, keys, flag_names, validate, run_experiment, plot, summary):
  """The main of an experiment with one results CSV: check the flags, run every setting not
  yet in the CSV (writing as it goes), record ``summary(frame)`` (a dict) in the sidecar, then
  draw the figure from the CSV alone; with ``--plot_only`` just the last step."""
  csv, = csv_paths(name)
  if not FLAGS.plot_only:
    _, flag_dict = start(validate, flag_names)
    results = Results(name, keys, flag_dict, FLAGS.resume)  # locked until finish
    with results.run.session():
      run_experiment(results)
      wall = results.finish(**summary(results.frame))
    progress(f'{name}: wrote {results.path} in {wall:.1f} s')
  paths = plot(csv)
  progress(f'{name}: wrote {", ".join(paths)}')


def apply_quick(values):
  """``--quick``: set each flag of ``values`` (name -> value) that the user did not set."""
  for name, value in values.items():
    if not FLAGS[name].present:
      FLAGS[name].value = value


@dataclasses.dataclass(frozen=True)
class Table:
  """One results CSV of an experiment: ``results_dir/<name>.csv`` sorted by ``keys``.

  ``summary(frame) -> dict`` goes into its sidecar at the end; ``resume=False`` for a table
  that is always rewritten (e.g. a fixed worked example).
  """
  name: str
  keys: Sequence[str]
  summary: Optional[Callable[[pd.DataFrame], dict]] = None
  resume: bool = True


@dataclasses.dataclass(frozen=True)
class Spec:
  """What :func:`main` needs to run an experiment.

  Attributes:
    name: the figure's name (``figures_dir/<name>.png/.pdf``).
    tables: the results CSVs; the first is the experiment's main table.
    flag_names: the script's own flags (recorded in every sidecar).
    validate: ``() -> checked`` raising FlagError; called before any work.
    run: ``(checked, results) -> None`` with ``results`` a :class:`Run` (a dict table name ->
      Results); it adds rows as settings finish (skipping ``results[...].done(...)`` ones
      under --resume), inside ``with results.unit():`` when a setting goes into several
      tables or several adds.
    plot: ``(*csv paths in table order) -> Figure``, from the CSVs only.
    message: ``(main table's summary dict) -> str``, the final progress line (optional).
    check: ``(main table's summary dict) -> str | None``, the experiment's own check
      (optional): a message when it failed (NaN must count as failure); the run then ends
      with exit status 1 after writing its CSVs and figure.
  """
  name: str
  tables: Sequence[Table]
  flag_names: Sequence[str]
  validate: Callable[[], Any]
  run: Callable[[Any, dict], None]
  plot: Callable[..., Any]
  message: Optional[Callable[[dict], str]] = None
  check: Optional[Callable[[dict], Optional[str]]] = None


def main(spec: Spec):
  """The main of every experiment: check the flags, run (each table written atomically as it
  grows), record each table's summary in its sidecar, then draw the figure from the CSVs
  alone and save it; with ``--plot_only`` just the last step."""
  _INTERRUPT['received'] = None  # a new run (in-process callers: a signal of an earlier one)
  paths = csv_paths(*(t.name for t in spec.tables))
  if not FLAGS.plot_only:
    checked, flag_dict = start(spec.validate, spec.flag_names)
    results = Run(flag_dict, [(t.name, t.keys) for t in spec.tables],
                  [t.name for t in spec.tables if FLAGS.resume and t.resume])
    with results.session():
      spec.run(checked, results)
      for t in reversed(spec.tables):  # the main table last: its wall time covers the run
        stats = t.summary(results[t.name].frame) if t.summary else {}
        wall = results[t.name].finish(**stats)
      first = spec.tables[0].name
      line = spec.message(stats) + '; ' if spec.message else ''
      progress(f'{spec.name}: {line}wrote {results[first].path} in {wall:.1f} s')
      figures = save_figure(spec.plot(*paths), spec.name)  # under the lock: the CSVs it drew
  else:
    figures = save_figure(spec.plot(*paths), spec.name)
  progress(f'{spec.name}: wrote {", ".join(figures)}')
  failure = spec.check(stats) if spec.check and not FLAGS.plot_only else None
  if failure:
    raise CheckFailed(f'{spec.name}: {failure}')


XLA_OPT_LEVEL = '--xla_backend_optimization_level=1'


def setup_jax(use_cache=True):
  """XLA options of every experiment; call before the first JAX computation.

  * XLA's CPU backend at optimisation level 1 instead of 2: these kernels compile about 1.5x
    faster and run as fast (a cold ``python -m experiments.sample_complexity`` takes ~29 s
    instead of ~35 s on 2 cores). Float results may differ from level 2 in the last bits, so
    the level is part of what makes a CSV reproducible; a level in the user's ``XLA_FLAGS``
    wins.
  * A persistent compilation cache (env CCMC_JAX_CACHE; empty disables) so reruns skip XLA
    compilation. Caching never changes the numbers.
  * With forced host devices, enough CPU threads (``sharding.ensure_cpu_threads``).
  """
  sharding.ensure_cpu_threads()
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_backend_optimization_level' not in xla_flags:
    os.environ['XLA_FLAGS'] = f'{xla_flags} {XLA_OPT_LEVEL}'.strip()
  if use_cache:
    enable_compilation_cache()


def enable_compilation_cache():
  """JAX's persistent compilation cache in CCMC_JAX_CACHE (default ~/.cache/ccmc_jax/xla;
  empty disables): reruns skip XLA compilation. Caching never changes the numbers."""
  cache = os.environ.get('CCMC_JAX_CACHE', os.path.expanduser('~/.cache/ccmc_jax/xla'))
  if cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)


def _in_gc_callback(frame):
  """Whether the signal landed in a garbage-collector callback or finaliser (JAX registers
  ``_xla_gc_callback``), where Python would print the KeyboardInterrupt as "Exception ignored"
  and carry on."""
  while frame is not None:
    if frame.f_code.co_name in ('_xla_gc_callback', '__del__'):
      return True
    frame = frame.f_back
  return False


def _raise_interrupt(signum, frame):
  _INTERRUPT['received'] = signum
  if _in_gc_callback(frame):  # deliver it again in 10 ms, once the callback has returned
    threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
    return
  if _INTERRUPT['depth']:  # inside uninterrupted(): raised when the block ends
    _INTERRUPT['signal'] = signum
    return
  raise KeyboardInterrupt(f'signal {signum}')


MAX_SEED = 2**32 - 1  # JAX's default PRNG keeps 32 bits of the seed: larger seeds would alias


# ---------------------------------------------------------- one-line absl parse errors

_EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))

_FLAG_TYPES = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false',
               'string': 'a string', 'comma separated list of strings': 'a comma-separated list'}


def accepts(flag):
  """What a flag accepts, in words (for the one-line parse errors)."""
  parser = flag.parser
  if getattr(parser, 'enum_values', None):
    return 'one of ' + ', '.join(parser.enum_values)
  kind = _FLAG_TYPES.get(parser.flag_type(), parser.flag_type())
  low, high = getattr(parser, 'lower_bound', None), getattr(parser, 'upper_bound', None)
  if low is not None or high is not None:
    kind += f' in [{"-inf" if low is None else low}, {"inf" if high is None else high}]'
  return kind


def _is_experiment_module(module):
  """A module of ``experiments`` (imported by name, or run as ``python -m`` / by path)."""
  if module.startswith('experiments.') or module == '__main__':
    return True
  return os.path.dirname(os.path.abspath(module)) == _EXPERIMENTS


def script_flags(flag_values):
  """The flags that the experiment modules define: the ones to suggest for a typo (never absl's
  own, such as ``--stderrthreshold`` or ``--logtostderr``, which a user of a script never
  means)."""
  names = []
  for module, module_flags in flag_values.flags_by_module_dict().items():
    if _is_experiment_module(module):
      names += [f.name for f in module_flags if f.name not in names]
  return names


def message(error, flag_values):
  """The one-line message (without ``error: ``) of an absl parse error."""
  if isinstance(error, flags.UnrecognizedFlagError):
    name = error.flagname
    given = str(getattr(error, 'flagvalue', '') or '').lstrip('-')
    shown = given if given.split('=', 1)[0] == name else name
    near = difflib.get_close_matches(name, script_flags(flag_values), n=3, cutoff=0.6)
    hint = f': did you mean {", ".join("--" + n for n in near)}?' if near else ' (see --help)'
    return f'--{shown} is not a flag of this script{hint}'
  text = (str(error) or type(error).__name__).splitlines()[0]
  if isinstance(error, flags.CantOpenFlagFileError):
    match = re.search(r"\[Errno \d+\] ([^:]+): '(.*)'$", text)
    if match:
      return f'--flagfile={match.group(2)} cannot be read ({match.group(1)})'
    return '--flagfile: ' + re.sub(r'^ERROR::\s*', '', text)
  if text == '--flagfile with no argument':
    return '--flagfile has no value: allowed values are a file of flags, one a line'
  match = re.match(r'flag --([^=:\s]+)=(.*?): ', text)  # absl: "flag --K=abc: why"
  if match and match.group(1) in flag_values:
    name, value = match.groups()
    return f'--{name}={value} is invalid: allowed values are {accepts(flag_values[name])}'
  match = re.match(r'Missing value for flag -+(\S+)$', text)
  if match and match.group(1) in flag_values:
    name = match.group(1)
    return f'--{name} has no value: allowed values are {accepts(flag_values[name])}'
  return text


def parse_flags(argv, flag_values=None):
  """``absl``'s flag parsing, ``flag_values(argv)`` (default ``absl.flags.FLAGS``), with its
  errors as one line ``error: ...`` on stderr and exit status 2: the flag, what it accepts and,
  for an unknown or misspelt flag, the nearest flags of the script (never absl's own)."""
  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    return flag_values(argv)
  except flags.Error as e:
    text = message(e, flag_values)
  except ValueError as e:  # absl's logging flags check some values themselves (--stderrthreshold)
    text = str(e).splitlines()[0]
    match = re.match(r"--(\w+) must be one of (?:\(case-insensitive\) )?(.*), not '(.*)'$", text)
    if match:
      name, allowed, value = match.groups()
      text = f'--{name}={value} is invalid: allowed values are {allowed}'
    elif not text.startswith('-'):  # e.g. "Unknown level: 'b'": name absl's flag that was given
      own = set(script_flags(flag_values))
      others = [a for a in argv[1:] if a.startswith('-') and
                a.lstrip('-').split('=', 1)[0] not in own]
      if len(others) == 1:
        text = f'{others[0]} is invalid: {text}'
  print(f'error: {text}', file=sys.stderr)
  sys.exit(2)


def _exit_during_shutdown(signum, frame):
  # After the run (interpreter shutdown, atexit callbacks): an exception raised here would be
  # printed as "Exception ignored in atexit callback" and the run would exit 0.
  sys.stdout.flush()
  print('interrupted during shutdown, after the run had ended', file=sys.stderr, flush=True)
  os._exit(130)


def _check_common_flags():
  """The flags of every script that the script's own ``validate`` does not check."""
  check_int('seed', FLAGS.seed, 0, MAX_SEED)
  if FLAGS.plot_only:
    check_writable_dir('figures_dir', FLAGS.figures_dir)


def run(entry, quick=None):
  """``absl.app.run`` with one-line errors and a clean exit on Ctrl-C / SIGTERM.

  ``quick``, when given, is the script's small settings for ``--quick``: a dict flag name ->
  value (applied to the flags the user did not set, :func:`apply_quick`) or a function doing
  it; it is applied before ``entry`` runs: a :class:`Spec` (run by :func:`main`) or a function
  ``entry(argv)``.

  Flag and results errors print ``error: ...`` and exit 2 (no traceback), absl's own parse
  errors included (:func:`parse_flags`). A failed experiment check (:class:`CheckFailed`)
  prints ``FAILED: ...`` and exits 1. An interrupt (SIGTERM, or SIGINT even when inherited as
  ignored) exits 130; the CSV then holds every setting finished so far (each was written
  atomically). One during interpreter shutdown prints one line and exits 130 too.
  """
  def wrapped(argv):
    if len(argv) > 1:
      print(f'error: unexpected arguments {" ".join(argv[1:])} (flags look like --K=5)',
            file=sys.stderr)
      sys.exit(2)
    for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: it may arrive as SIG_IGN
      signal.signal(signum, _raise_interrupt)
    logging.set_verbosity(logging.WARNING)
    try:
      _check_common_flags()
      if quick is not None and FLAGS.quick:
        if callable(quick):
          quick()
        else:
          apply_quick(quick)
      if isinstance(entry, Spec):
        main(entry)
      else:
        entry(argv)
      check_interrupted()  # a signal whose exception something swallowed: not a success
    except (FlagError, io.UserError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    except CheckFailed as e:
      print(f'FAILED: {e}', file=sys.stderr)
      sys.exit(1)
    except (MemoryError, RuntimeError) as e:  # XLA's RESOURCE_EXHAUSTED is a RuntimeError
      message = io.out_of_memory(e, _MEMORY_TERMS)
      if message is None:
        raise
      print(f'error: {message}', file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      _INTERRUPT['received'] = None  # delivered
      print('interrupted: the results CSV holds every setting finished so far; '
            'rerun with --resume to complete it', file=sys.stderr)
      sys.exit(130)
    finally:
      for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_during_shutdown)
  try:
    app.run(wrapped, flags_parser=parse_flags)
  except SystemExit as e:
    # absl exits 1 after printing --help; asking for help is not a failure.
    if e.code == 1 and {'--help', '-h', '-?', '--helpshort', '--helpfull'} & set(sys.argv[1:]):
      sys.exit(0)
    raise
