"""Nothing lost, nothing silently wrong (issue 14): runs that write several CSVs resume as a unit,
--resume matches settings as the CSV stores them and keeps nothing foreign, a second run into
the same results is refused, a corrupt sidecar or a full disk is one line. In process, with toy
specs or a real script's run loop over fake trials (no JAX compilation)."""
import dataclasses
import errno
import json
import os
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import io
from experiments import common
from experiments import trajectory_learning as tl
from experiments.plots import style

FLAGS = flags.FLAGS
if not FLAGS.is_parsed():
  FLAGS.mark_as_parsed()


def tiny_plot(*csvs):
  fig, ax = style.subplots(figsize=(1, 1))
  ax.plot(pd.read_csv(csvs[0]).iloc[:, -1])
  return fig


def run_main(spec, tmp, resume=False):
  with flagsaver.flagsaver(results_dir=str(tmp / 'r'), figures_dir=str(tmp / 'f'),
                           resume=resume):
    common.main(spec)


def read(tmp, name):
  with open(tmp / 'r' / name, 'rb') as f:
    return f.read()


def toy_spec(settings, run=None, name='toy'):
  """One table keyed by (K, scale, trial): one setting per (K, scale) of ``settings``."""
  def default_run(_, results):
    table = results[name]
    for K, scale in settings:
      if not table.done({'K': K, 'scale': scale}):
        table.add({'K': K, 'scale': scale, 'trial': [0, 1], 'v': [K * scale, 2.0]})
  return common.Spec(name, [common.Table(name, ['K', 'scale', 'trial'])], [],
                     lambda: None, run or default_run, tiny_plot)


# 1. Several CSVs resume as a unit ------------------------------------------------------------

def fake_trials(seed, K, L0, Ts, trials, scale, ridge):
  """trajectory_learning's trials.run with made-up numbers (the run loop is what is tested)."""
  for T in Ts:
    key = {'source': np.repeat(['single', 'iid'], trials), 'K': K, 'L0': L0, 'T': T,
           'trial': np.tile(np.arange(trials), 2), 'seed': seed}
    table = {**key, 'error': np.arange(2 * trials) / T, 'visited_rows': np.full(2 * trials, K),
             'min_visits': 1, 'max_visits': 2, 'newton_iters': 3}
    rows = {**{k: np.repeat(v, K) if np.ndim(v) else v for k, v in key.items()},
            'row': np.tile(np.arange(K), 2 * trials), 'visits': 1,
            'row_error': np.arange(2 * trials * K) / T}
    yield T, table, rows


def test_sigterm_between_the_two_csvs_of_a_setting_then_resume(tmp_path, monkeypatch):
  # trajectory_learning writes trajectory_learning.csv and _rows.csv per T. A SIGTERM (its
  # handler, common._raise_interrupt) arriving while the rows CSV of the second T is being
  # written used to leave that T in the first table only; --resume then skipped it and the rows
  # CSV lost it for good, with exit 0.
  monkeypatch.setattr(tl.trials, 'run', fake_trials)
  spec = dataclasses.replace(tl.SPEC, plot=tiny_plot)
  with flagsaver.flagsaver(K=3, L0=2, T=['4', '8', '16'], trials=2):
    run_main(spec, tmp_path / 'whole')
    mkstemp, calls = io.tempfile.mkstemp, []

    def interrupted_mkstemp(*args, prefix='', **kw):
      if prefix.startswith('.trajectory_learning_rows.csv'):
        calls.append(prefix)
        if len(calls) == 2:
          common._raise_interrupt(15, None)  # what SIGTERM does
      return mkstemp(*args, prefix=prefix, **kw)

    monkeypatch.setattr(io.tempfile, 'mkstemp', interrupted_mkstemp)
    with pytest.raises(KeyboardInterrupt):
      run_main(spec, tmp_path / 'cut')
    monkeypatch.setattr(io.tempfile, 'mkstemp', mkstemp)
    Ts = [sorted(pd.read_csv(tmp_path / 'cut' / 'r' / f'{n}.csv')['T'].unique())
          for n in (tl.NAME, tl.ROWS_NAME)]
    assert Ts[0] == Ts[1]  # the setting is in both tables or in neither
    run_main(spec, tmp_path / 'cut', resume=True)
  for name in (tl.NAME, tl.ROWS_NAME):
    assert read(tmp_path / 'cut', f'{name}.csv') == read(tmp_path / 'whole', f'{name}.csv')
    assert json.loads(read(tmp_path / 'cut', f'{name}.meta.json'))['status'] == 'complete'


def test_a_row_the_run_did_not_write_is_refused_under_resume(tmp_path):
  # A K = 9 row in the CSV of a K = 6 run (another run, an edit, a torn write) used to survive
  # --resume with exit 0.
  spec = toy_spec([(6, 1.0)])
  run_main(spec, tmp_path)
  with open(tmp_path / 'r' / 'toy.csv', 'a') as f:
    f.write('9,1,0,9\n')
  with pytest.raises(common.FlagError, match=r'^--resume: .*toy\.csv is not what this run '
                     r'last wrote.*rerun without --resume$'):
    run_main(spec, tmp_path, resume=True)


def test_rows_with_present_keys_replace_them_never_duplicate(tmp_path):
  def run(_, results):
    results['toy'].add({'K': 2, 'scale': 0.5, 'trial': [0, 1], 'v': [1.0, 2.0]})
    results['toy'].add({'K': 2, 'scale': 0.5, 'trial': [1], 'v': [3.0]})
  run_main(toy_spec([], run), tmp_path)
  frame = pd.read_csv(tmp_path / 'r' / 'toy.csv')
  assert frame['trial'].tolist() == [0, 1] and frame['v'].tolist() == [1.0, 3.0]


class Killed(BaseException):
  """Stands for SIGKILL: no cleanup runs (the test switches os.unlink off meanwhile)."""


def test_a_run_killed_between_the_journal_and_the_renames_is_completed_by_resume(
    tmp_path, monkeypatch):
  def run(_, results):
    for n in (1, 2):
      with results.unit():
        results['two'].add({'n': n, 'v': [n]})
        results['two_rows'].add({'n': n, 'row': [0, 1], 'v': [n, -n]})
  spec = common.Spec('two', [common.Table('two', ['n']), common.Table('two_rows', ['n', 'row'])],
                     [], lambda: None, run, tiny_plot)
  run_main(spec, tmp_path / 'whole')
  replace, unlink, calls = io.replace, os.unlink, []

  def killed_replace(tmp, path):
    nonlocal calls
    calls += [path] if path.endswith('.csv') else []
    if len(calls) == 4:  # the second setting: 'two' renamed, 'two_rows' still staged
      monkeypatch.setattr(os, 'unlink', lambda p: None)
      raise Killed()
    replace(tmp, path)

  monkeypatch.setattr(io, 'replace', killed_replace)
  with pytest.raises(Killed):
    run_main(spec, tmp_path / 'cut')
  monkeypatch.setattr(os, 'unlink', unlink)
  monkeypatch.setattr(io, 'replace', replace)
  assert read(tmp_path / 'cut', 'two_rows.csv') != read(tmp_path / 'whole', 'two_rows.csv')
  run_main(spec, tmp_path / 'cut', resume=True)
  for name in ('two.csv', 'two_rows.csv'):
    assert read(tmp_path / 'cut', name) == read(tmp_path / 'whole', name)
  assert not [p for p in os.listdir(tmp_path / 'cut' / 'r') if p.endswith('.tmp')]


# 2. Resume matches settings exactly; what it needs exists before any work -------------------

def test_resume_matches_a_float_setting_as_the_csv_stores_it(tmp_path):
  # collapse_statistics --scale=0.1234567891234: the CSV stores '%.9g' (0.123456789), done()
  # compared the full value, so every --resume of the complete run appended the rows again.
  spec = toy_spec([(3, 0.1234567891234), (3, 2.0)])
  run_main(spec, tmp_path)
  complete = read(tmp_path, 'toy.csv')
  for _ in range(2):
    run_main(spec, tmp_path, resume=True)
  assert read(tmp_path, 'toy.csv') == complete
  assert len(pd.read_csv(tmp_path / 'r' / 'toy.csv')) == 4


def test_sigterm_before_the_first_sidecar_still_resumes(tmp_path, monkeypatch):
  # A SIGTERM between the first CSV write and the first sidecar write made --resume refuse
  # ("made with other flags (...every flag...)"). The sidecar now exists before any work.
  seen = []

  def run(_, results):
    seen.append(json.loads(read(tmp_path, 'toy.meta.json')))
    toy_spec([(3, 1.0)]).run(_, results)

  spec = toy_spec(None, run)
  write_meta = io.write_meta

  def interrupted_write_meta(*args, **kw):
    monkeypatch.setattr(io, 'write_meta', write_meta)
    raise KeyboardInterrupt('signal 15')

  monkeypatch.setattr(io, 'write_meta', interrupted_write_meta)
  with pytest.raises(KeyboardInterrupt):
    run_main(spec, tmp_path)
  run_main(spec, tmp_path, resume=True)
  assert seen[0]['status'] == 'partial' and seen[0]['flags']['seed'] == 0
  assert len(pd.read_csv(tmp_path / 'r' / 'toy.csv')) == 2


# 5. Concurrent runs into one results folder ------------------------------------------------

def test_a_second_run_into_the_same_results_is_refused_and_writes_nothing(tmp_path):
  # Two runs with different settings into one --results_dir both said "wrote ...csv"; the CSV
  # then held only one of them.
  inner = toy_spec([(9, 1.0)])
  errors, before = [], {}

  def outer_run(checked, results):
    results['toy'].add({'K': 6, 'scale': 1.0, 'trial': [0], 'v': [1.0]})
    before.update({p: read(tmp_path, p) for p in sorted(os.listdir(tmp_path / 'r'))})
    try:
      run_main(inner, tmp_path)  # a concurrent run: locks are per open file, even in process
    except io.UserError as e:
      errors.append(str(e))
    assert {p: read(tmp_path, p) for p in sorted(os.listdir(tmp_path / 'r'))} == before

  run_main(toy_spec(None, outer_run), tmp_path)
  assert len(errors) == 1 and '\n' not in errors[0]
  assert 'toy.csv is being written by another run' in errors[0]
  assert pd.read_csv(tmp_path / 'r' / 'toy.csv')['K'].tolist() == [6]


def test_the_lock_is_released_when_its_process_dies(tmp_path):
  os.makedirs(tmp_path / 'r')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import fcntl, os, sys, time; fd = os.open(sys.argv[1], '
       'os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print(1, flush=True); '
       'time.sleep(60)', str(tmp_path / 'r' / '.toy.lock')], stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == b'1'
    with pytest.raises(io.UserError, match='being written by another run'):
      run_main(toy_spec([(3, 1.0)]), tmp_path)
    assert sorted(os.listdir(tmp_path / 'r')) == ['.toy.lock']  # no CSV, no sidecar
  finally:
    holder.kill()
    holder.wait()
  run_main(toy_spec([(3, 1.0)]), tmp_path)
  assert os.path.isfile(tmp_path / 'r' / 'toy.csv')


def test_sigterm_during_savefig_leaves_the_figure_whole_and_no_temporary(tmp_path):
  fig = tiny_plot(io.write_csv(pd.DataFrame({'v': [1, 2]}), tmp_path / 'v.csv') or
                  tmp_path / 'v.csv')
  savefig = fig.savefig

  def interrupted_savefig(*args, **kw):
    common._raise_interrupt(15, None)  # SIGTERM's handler, mid-save
    return savefig(*args, **kw)

  fig.savefig = interrupted_savefig
  with flagsaver.flagsaver(figures_dir=str(tmp_path / 'f')):
    with pytest.raises(KeyboardInterrupt):
      common.save_figure(fig, 'toy')
  assert sorted(os.listdir(tmp_path / 'f')) == ['toy.pdf', 'toy.png']


# 7. A corrupt sidecar under --resume, a full disk: one line ---------------------------------

@pytest.mark.parametrize('content', [b'[1, 2]', b'{', b'\x00\xff\xfe junk', b'"text"'])
def test_a_corrupt_or_non_object_sidecar_under_resume_is_one_line(tmp_path, content):
  spec = toy_spec([(3, 1.0)])
  run_main(spec, tmp_path)
  (tmp_path / 'r' / 'toy.meta.json').write_bytes(content)
  with pytest.raises(io.ResultsError) as e:
    run_main(spec, tmp_path, resume=True)
  assert str(e.value).startswith(str(tmp_path / 'r' / 'toy.meta.json'))
  assert 'metadata sidecar' in str(e.value) and '\n' not in str(e.value)


class FullDisk:
  """A file whose first write fails as on a full disk."""

  def __init__(self, fd):
    self.fd = fd

  def __enter__(self):
    return self

  def __exit__(self, *_):
    os.close(self.fd)

  def write(self, _):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def flush(self):
    pass


@pytest.mark.parametrize('target', ['toy.csv', 'toy.meta.json', 'toy.png'])
def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, target):
  run_main(toy_spec([(3, 1.0)]), tmp_path)
  folder = tmp_path / ('f' if target.endswith('png') else 'r')
  previous = (folder / target).read_bytes()
  fdopen = os.fdopen

  def full_fdopen(fd, *args, **kw):
    name = os.path.basename(os.readlink(f'/proc/self/fd/{fd}'))
    return FullDisk(fd) if name.startswith(f'.{target}') else fdopen(fd, *args, **kw)

  monkeypatch.setattr(os, 'fdopen', full_fdopen)
  with pytest.raises(io.UserError) as e:
    run_main(toy_spec([(4, 1.0)]), tmp_path)
  monkeypatch.setattr(os, 'fdopen', fdopen)
  assert str(e.value) == f'no space left on device writing {folder / target}'
  assert (folder / target).read_bytes() == previous
  assert not [p for p in os.listdir(folder) if p.endswith('.tmp')]
