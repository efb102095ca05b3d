"""Shared plumbing of the experiment scripts: flags every script has, flag checks with one-line
errors, resumable atomic results, metadata sidecars, progress lines and figure saving.

The experiments import ``ccmc_jax``; ``ccmc_jax`` never imports this.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import pandas as pd

from ccmc_jax import io
from ccmc_jax import sharding
from ccmc_jax import tolerances
from experiments.plots import style

flags.DEFINE_integer('seed', 0, 'Root PRNG seed; trial i uses fold_in(setting key, i).')
flags.DEFINE_string('results_dir', 'results', 'Folder for the CSV results and .meta.json.')
flags.DEFINE_string('figures_dir', 'figures', 'Folder for the PNG and PDF figures.')
flags.DEFINE_bool('quick', False, 'Small, fast smoke-test settings (overrides the defaults).')
flags.DEFINE_bool('resume', False, 'Skip settings already in the results CSV (same flags).')
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


def check_int(name, value, lo, hi=None):
  """Require ``lo <= value <= hi`` for an int flag (or every element of a list flag)."""
  for v in value if isinstance(value, (list, tuple)) else [value]:
    try:
      ok = int(v) == float(v) and int(v) >= lo and (hi is None or int(v) <= hi)
    except (TypeError, ValueError):
      ok = False
    if not ok:
      allowed = f'an integer >= {lo}' if hi is None else f'an integer in [{lo}, {hi}]'
      raise FlagError(f'--{name}={v} is invalid: allowed values are {allowed}')
  if isinstance(value, (list, tuple)) and not value:
    raise FlagError(f'--{name} is empty: give at least one value')


def check_float(name, value, lo=None, hi=None, lo_open=False):
  """Require a finite float in ``[lo, hi]`` (``(lo, hi]`` if ``lo_open``)."""
  for v in value if isinstance(value, (list, tuple)) else [value]:
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


def check_writable_dir(name, path):
  """Require ``path`` to be (creatable as) a writable folder."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise FlagError(f'--{name}={path} is not a writable folder ({e.strerror})') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise FlagError(f'--{name}={path} is not a writable folder (permission denied)')
  try:  # a real write: root passes os.access on /proc and on read-only mounts
    fd, probe = tempfile.mkstemp(prefix='.write_probe_', dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise FlagError(f'--{name}={path} is not a writable folder ({e.strerror})') from None


def check_memory(name, value, bytes_needed, fraction=0.7):
  """Refuse settings whose estimated working set exceeds ``fraction`` of physical memory."""
  io.check_memory(name, value, bytes_needed, FlagError, fraction)


def flag_values(names):
  """The values of the named flags, as a plain dict for the metadata sidecar."""
  return {n: FLAGS[n].value for n in list(names) + list(COMMON_FLAGS)}


def progress(msg, start=None):
  """A progress line on stderr: the message and the elapsed time."""
  elapsed = '' if start is None else f' [{time.time() - start:6.1f} s]'
  print(f'{msg}{elapsed}', file=sys.stderr, flush=True)


class Results:
  """A long-format results table written atomically after every finished setting.

  With ``resume=True`` the rows of an existing CSV made with the same flags are kept and
  :meth:`done` says which settings to skip. Rows are sorted by ``keys`` on every write, so an
  interrupted-then-resumed run ends with exactly the bytes of an uninterrupted one.
  """

  def __init__(self, name, keys, flag_dict, resume=False):
    self.name, self.keys, self.flags = name, list(keys), flag_dict
    self.path = os.path.join(FLAGS.results_dir, f'{name}.csv')
    self.meta_path = os.path.join(FLAGS.results_dir, f'{name}.meta.json')
    self.frame = pd.DataFrame()
    self.start = time.time()
    self._meta_written = False
    if resume and os.path.isfile(self.path):
      meta = io.read_meta(self.meta_path) or {}
      old = {k: v for k, v in meta.get('flags', {}).items() if k not in NEUTRAL_FLAGS}
      new = {k: v for k, v in flag_dict.items() if k not in NEUTRAL_FLAGS}
      if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise FlagError(f'--resume: {self.path} was made with other flags '
                        f'({", ".join(changed) or "no metadata"}); rerun without --resume')
      self.frame = io.read_csv(self.path, required=self.keys)

  def done(self, setting: dict) -> bool:
    """Whether the rows of this setting (a dict over some of the key columns) are present."""
    if self.frame.empty:
      return False
    mask = True
    for k, v in setting.items():
      mask = mask & (self.frame[k] == v)
    return bool(getattr(mask, 'any', lambda: mask)())

  def add(self, rows):
    """Append rows (a DataFrame, or a dict of columns) and rewrite the CSV atomically.

    The sidecar (status 'partial', the flags --resume checks) is written at the first add
    only: the flags do not change during a run, and :meth:`finish` writes the final one.
    """
    rows = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    first = not self._meta_written
    self.frame = pd.concat([self.frame, rows], ignore_index=True) if len(self.frame) else rows
    self.frame = self.frame.sort_values(self.keys, kind='stable').reset_index(drop=True)
    io.write_csv(self.frame, self.path)
    if first:
      io.write_meta(self.meta_path, self.flags, status='partial', keys=self.keys)
      self._meta_written = True

  def finish(self, **extra):
    """Mark the results complete in the sidecar, with the wall time."""
    wall = time.time() - self.start
    io.write_meta(self.meta_path, self.flags, status='complete', rows=len(self.frame),
                  keys=self.keys, wall_time_s=round(wall, 2),
                  tolerances=tolerances.for_table(self.name), **extra)  # used by compare
    return wall


def save_figure(fig, name):
  """Save ``figures_dir/name.png`` and ``.pdf`` atomically (see ``plots.style.save``)."""
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
    results = Results(name, keys, flag_dict, FLAGS.resume)
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
    run: ``(checked, results) -> None`` with ``results`` a dict table name -> Results; it
      adds rows as settings finish (skipping ``results[...].done(...)`` ones under --resume).
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
  paths = csv_paths(*(t.name for t in spec.tables))
  if not FLAGS.plot_only:
    checked, flag_dict = start(spec.validate, spec.flag_names)
    results = {t.name: Results(t.name, t.keys, flag_dict, FLAGS.resume and t.resume)
               for t in spec.tables}
    spec.run(checked, results)
    for t in reversed(spec.tables):  # the main table last: its wall time covers the run
      stats = t.summary(results[t.name].frame) if t.summary else {}
      wall = results[t.name].finish(**stats)
    first = spec.tables[0].name
    line = spec.message(stats) + '; ' if spec.message else ''
    progress(f'{spec.name}: {line}wrote {results[first].path} in {wall:.1f} s')
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


def _raise_interrupt(signum, frame):
  raise KeyboardInterrupt(f'signal {signum}')


MAX_SEED = 2**32 - 1  # JAX's default PRNG keeps 32 bits of the seed: larger seeds would alias


_FLAG_TYPES = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false',
               'string': 'a string', 'comma separated list of strings': 'a comma-separated list'}


def _accepts(flag):
  """What a flag accepts, in words (for the one-line parse errors)."""
  parser = flag.parser
  if getattr(parser, 'enum_values', None):
    return 'one of ' + ', '.join(parser.enum_values)
  kind = _FLAG_TYPES.get(parser.flag_type(), parser.flag_type())
  low, high = getattr(parser, 'lower_bound', None), getattr(parser, 'upper_bound', None)
  if low is not None or high is not None:
    kind += f' in [{"-inf" if low is None else low}, {"inf" if high is None else high}]'
  return kind


def parse_flags(argv):
  """``absl``'s flag parsing with its errors as one line (exit 2): the flag, what it accepts,
  and for an unknown flag the nearest known ones."""
  try:
    return FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    name = e.flagname
    near = difflib.get_close_matches(name, list(FLAGS), n=3, cutoff=0.6)
    hint = f': did you mean {", ".join("--" + n for n in near)}?' if near else ' (see --help)'
    message = f'--{name} is not a flag of this script{hint}'
  except flags.Error as e:
    text = (str(e) or type(e).__name__).splitlines()[0]
    match = re.match(r'flag --([^=:\s]+)=(.*?): ', text)  # absl: "flag --K=abc: why"
    if match and match.group(1) in FLAGS:
      name, value = match.groups()
      message = f'--{name}={value} is invalid: allowed values are {_accepts(FLAGS[name])}'
    else:
      message = text
  print(f'error: {message}', file=sys.stderr)
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
    except (FlagError, io.UserError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    except CheckFailed as e:
      print(f'FAILED: {e}', file=sys.stderr)
      sys.exit(1)
    except KeyboardInterrupt:
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
