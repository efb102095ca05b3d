"""Bad input and interrupts as a user meets them (subprocesses through ``experiments.common.run``):
absl's own parse errors, an out-of-range --seed and --plot_only into a bad --figures_dir are one
``error:`` line with exit 2 and no file; SIGINT stops a run even when inherited as ignored."""
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, run_module

BAD = [
    # (module, args, the line starts with, words it must contain)
    ('experiments.collapse', ['--seed=99999999999999999999'], 'error: --seed=', ['4294967295']),
    ('experiments.collapse', ['--seed=-1'], 'error: --seed=', ['4294967295']),
    ('experiments.sample_complexity', ['--trials=abc'], 'error: --trials=abc', ['integer']),
    ('experiments.sample_complexity', ['--cross=maybe'], 'error: --cross=maybe',
     ['true or false']),
    ('experiments.collapse', ['--sed=3'], 'error: --sed', ['did you mean', '--seed']),
    ('experiments.collapse', ['--bogus_flag=1'], 'error: --bogus_flag', ['--help']),
]


def files_under(path):
  return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


@pytest.mark.parametrize('module,args,start,words', BAD, ids=[a[0] for _, a, _, _ in BAD])
def test_parse_and_seed_errors_are_one_line_exit_2(tmp_path, module, args, start, words):
  r = run_module(module, *args, tmp=tmp_path)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2, r.stderr
  assert len(lines) == 1 and lines[0].startswith(start), r.stderr
  assert all(w in lines[0] for w in words), r.stderr
  assert not files_under(tmp_path)


@pytest.mark.parametrize('where', ['a file', '/proc'])
def test_plot_only_into_an_unwritable_figures_dir(tmp_path, where):
  # /proc passes os.access(W_OK) for root, yet nothing can be created there.
  if where == 'a file':
    figures = tmp_path / 'figures'
    figures.write_text('not a folder')
  else:
    figures = '/proc'
  r = run_module('experiments.collapse', '--plot_only', f'--figures_dir={figures}', tmp=tmp_path)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2, r.stderr
  assert lines == [l for l in lines if l.startswith(f'error: --figures_dir={figures} ')], r.stderr
  assert len(lines) == 1, r.stderr
  assert set(files_under(tmp_path)) <= {str(tmp_path / 'figures')}


def test_sigint_stops_a_run_that_inherited_sigint_ignored(tmp_path):
  # A background job of a non-interactive shell starts with SIGINT set to SIG_IGN.
  cmd = [sys.executable, '-m', 'experiments.sample_complexity', '--K=3,4', '--n=200,400',
         '--trials=3', '--mc_samples=1000', f'--results_dir={tmp_path}/results',
         f'--figures_dir={tmp_path}/figures']
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
  for line in proc.stderr:
    if '(1/4)' in line:  # the handlers are installed once the first setting is reported
      proc.send_signal(signal.SIGINT)
      break
  rest = proc.stderr.read()
  assert proc.wait(timeout=120) == 130, rest
  assert 'interrupted' in rest
  assert not [f for f in files_under(tmp_path) if f.endswith('.tmp') or '.tmp' in f]
  assert not os.path.exists(tmp_path / 'figures') or not os.listdir(tmp_path / 'figures')


SHUTDOWN_SCRIPT = """
import atexit, os, signal, time
from experiments import common
def entry(argv):
  # Runs after the entry returned, during interpreter shutdown.
  atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(1)))
common.run(entry)
"""


def test_sigterm_during_interpreter_shutdown_is_no_traceback_and_not_exit_0(tmp_path):
  r = subprocess.run([sys.executable, '-c', SHUTDOWN_SCRIPT, f'--results_dir={tmp_path}/r',
                      f'--figures_dir={tmp_path}/f'], cwd=ROOT, capture_output=True, text=True,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=60)
  assert r.returncode == 130, r.stderr
  assert 'Exception ignored' not in r.stderr and 'Traceback' not in r.stderr, r.stderr
  assert [l for l in r.stderr.splitlines() if l.strip()] == [
      'interrupted during shutdown, after the run had ended'], r.stderr


def test_a_signal_whose_exception_was_swallowed_still_stops_the_run():
  """SIGTERM landing in a garbage-collector callback (JAX's ``_xla_gc_callback``): Python prints
  "Exception ignored" and the run went on to exit 0. The handler also records the signal, and
  the next progress line / table write / the end of the run raises it."""
  from experiments import common
  try:
    try:
      common._raise_interrupt(signal.SIGTERM, None)
    except KeyboardInterrupt:
      pass  # what Python does with an exception raised inside a gc callback
    with pytest.raises(KeyboardInterrupt):
      common.progress('a progress line after the swallowed signal')
    with common.uninterrupted():  # deferred inside a group of writes ...
      common.check_interrupted()
    with pytest.raises(KeyboardInterrupt):  # ... and raised after it
      common.check_interrupted()
  finally:
    common._INTERRUPT.update(received=None, signal=None)


def test_a_signal_landing_in_jax_gc_callback_is_delivered_again_after_it(monkeypatch):
  """Raised inside JAX's gc callback the KeyboardInterrupt would be printed as "Exception
  ignored in: <function _xla_gc_callback>" (a traceback on stderr); the handler records it and
  sends the signal again once the callback has returned."""
  import sys
  import threading
  from experiments import common
  resent = []
  monkeypatch.setattr(threading, 'Timer', lambda delay, fn, args: type(
      't', (), {'start': lambda self: resent.append((delay, fn, args))})())

  def _xla_gc_callback():  # named like JAX's: the handler sees this frame
    common._raise_interrupt(signal.SIGTERM, sys._getframe())

  try:
    _xla_gc_callback()  # no KeyboardInterrupt inside the callback
    assert common._INTERRUPT['received'] == signal.SIGTERM
    assert resent == [(0.01, os.kill, (os.getpid(), signal.SIGTERM))]
    with pytest.raises(KeyboardInterrupt):
      common._raise_interrupt(signal.SIGTERM, sys._getframe())  # elsewhere: raised at once
  finally:
    common._INTERRUPT.update(received=None, signal=None)
