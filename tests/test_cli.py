"""The experiment scripts as a user runs them (subprocesses): byte-identical reruns, SIGTERM then
--resume equal to an uninterrupted run, and a one-line error, non-zero exit and no partial file
for every kind of bad input."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_module

# Tiny sample-complexity settings: 2 (K, L) settings x 2 n values, a few seconds.
SC_TINY = ['--K=3,4', '--n=200,400', '--trials=3', '--mc_samples=1000']


run = run_module


def csv_bytes(tmp, name):
  with open(os.path.join(tmp, 'results', f'{name}.csv'), 'rb') as f:
    return f.read()


@pytest.fixture(scope='module')
def sc_seed0(tmp_path_factory):
  """One tiny sample-complexity run with --seed=0, shared by the tests below."""
  tmp = tmp_path_factory.mktemp('sc_seed0')
  r = run('experiments.sample_complexity', *SC_TINY, '--seed=0', tmp=tmp)
  assert r.returncode == 0, r.stderr
  return tmp


def test_same_seed_same_bytes_other_seed_other_numbers(tmp_path, sc_seed0):
  b, c = (run('experiments.sample_complexity', *SC_TINY, f'--seed={s}', tmp=tmp_path / d)
          for d, s in (('b', 0), ('c', 1)))
  for r in (b, c):
    assert r.returncode == 0, r.stderr
  assert csv_bytes(sc_seed0, 'sample_complexity') == csv_bytes(tmp_path / 'b',
                                                                'sample_complexity')
  assert csv_bytes(sc_seed0, 'sample_complexity') != csv_bytes(tmp_path / 'c',
                                                                'sample_complexity')


def test_meta_sidecar_records_flags_versions_and_commit(sc_seed0):
  import json
  with open(sc_seed0 / 'results' / 'sample_complexity.meta.json') as f:
    meta = json.load(f)
  assert meta['flags']['seed'] == 0 and meta['flags']['K'] == ['3', '4']
  assert meta['keys'] == ['K', 'L', 'n', 'trial']
  assert meta['status'] == 'complete'
  text = json.dumps(meta)
  assert 'jax' in text and 'git_commit' in text


def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path, sc_seed0):
  # Interrupted run: SIGTERM as soon as the first setting is reported finished.
  out = tmp_path / 'cut'
  cmd = [sys.executable, '-m', 'experiments.sample_complexity', *SC_TINY,
         f'--results_dir={out}/results', f'--figures_dir={out}/figures']
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if '(2/4)' in line:  # two of the four (K, L, n) cells written
      proc.send_signal(signal.SIGTERM)
      break
  rest = proc.stderr.read()
  assert proc.wait(timeout=120) == 130, rest
  assert 'interrupted' in rest
  partial = csv_bytes(out, 'sample_complexity')
  n_rows = partial.count(b'\n') - 1
  assert 0 < n_rows < 12  # a valid CSV of what finished (4 cells x 3 trials when complete)
  resumed = run('experiments.sample_complexity', *SC_TINY, '--seed=0', '--resume', tmp=out)
  assert resumed.returncode == 0, resumed.stderr
  assert csv_bytes(out, 'sample_complexity') == csv_bytes(sc_seed0, 'sample_complexity')


def test_resume_with_other_flags_is_refused(tmp_path, sc_seed0):
  import shutil
  shutil.copytree(sc_seed0, tmp_path, dirs_exist_ok=True)
  r = run('experiments.sample_complexity', *SC_TINY, '--scale=2', '--resume', tmp=tmp_path)
  assert r.returncode == 2 and r.stderr.startswith('error: --resume') and 'scale' in r.stderr


BAD_INPUTS = [
    ('experiments.sample_complexity', ['--K=1'], '--K'),
    ('experiments.sample_complexity', ['--K=1000', '--n=1000000'], '--K'),  # memory estimate
    ('experiments.sample_complexity', ['--L=0'], '--L'),
    ('experiments.sample_complexity', ['--n=0'], '--n'),
    ('experiments.sample_complexity', ['--n=-5'], '--n'),
    ('experiments.sample_complexity', ['--trials=0'], '--trials'),
    ('experiments.sample_complexity', ['--scale=nan'], '--scale'),
    ('experiments.sample_complexity', ['--scale=inf'], '--scale'),
    ('experiments.sample_complexity', ['--scale=-1'], '--scale'),
    ('experiments.sample_complexity', ['--prompts=zipf'], '--prompts'),
    ('experiments.collapse', ['--K=1'], '--K'),
    ('experiments.collapse', ['--variants=random,bogus'], '--variants'),
    ('experiments.collapse', ['--seeds=0'], '--seeds'),
    ('experiments.collapse', ['--T=0'], '--T'),
    ('experiments.ccmc_example', ['--W=1,2,3'], '--W'),
    ('experiments.ccmc_example', ['--X=0,5'], '--X'),
    ('experiments.self_vs_cross', ['--K=1'], '--K'),
    ('experiments.self_vs_cross', ['--n=0'], '--n'),
    ('experiments.self_vs_cross', ['--trials=0'], '--trials'),
    ('experiments.self_vs_cross', ['--graph_prompts=1 x 0'], '--graph_prompts'),
    ('experiments.attention_equivalence', ['--attention=self,bogus'], '--attention'),
    ('experiments.positional_encoding', ['--L=2'], '--L'),
    ('experiments.positional_encoding', ['--n=100,0'], '--n'),
    ('experiments.trajectory_learning', ['--T=0'], '--T'),
    ('experiments.trajectory_learning', ['--K=1'], '--K'),
    ('experiments.collapse_statistics', ['--variants=random,banana'], '--variants'),
    ('experiments.collapse_statistics', ['--L0=1'], '--L0'),
]


@pytest.mark.parametrize('module,args,flag', BAD_INPUTS,
                         ids=[f'{m.split(".")[1]}{a}' for m, a, _ in BAD_INPUTS])
def test_bad_flag_one_line_error_no_file(tmp_path, module, args, flag):
  r = run(module, *args, tmp=tmp_path)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {flag}'), r.stderr
  assert not os.path.exists(tmp_path / 'results') or not os.listdir(tmp_path / 'results')


def test_unwritable_results_dir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  r = subprocess.run([sys.executable, '-m', 'experiments.sample_complexity', '--quick',
                      f'--results_dir={blocker}/results', f'--figures_dir={tmp_path}/fig'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --results_dir='), r.stderr


@pytest.mark.parametrize('content,why', [
    (np.full((6, 5), 0.2), 'square'),
    (np.full((5, 5), 0.3), 'stochastic'),
    (np.full((4, 4), 0.25), '--K=5'),
])
def test_bad_P_file(tmp_path, content, why):
  path = tmp_path / 'P.csv'
  np.savetxt(path, content, delimiter=',')
  r = run('experiments.collapse', '--K=5', f'--P_file={path}', tmp=tmp_path)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --P_file'), r.stderr
  assert why in lines[0], lines[0]
  assert not os.path.exists(tmp_path / 'results' / 'collapse.csv')


@pytest.mark.parametrize('module,name', [('experiments.sample_complexity', 'sample_complexity'),
                                         ('experiments.ccmc_example', 'ccmc_example')])
@pytest.mark.parametrize('content,why', [
    ('a,b\n1,2\n', 'lacks column'),
    (None, 'non-numeric'),
    ('', 'not a readable CSV'),
])
def test_plot_only_rejects_malformed_csv(tmp_path, module, name, content, why):
  results = tmp_path / 'results'
  results.mkdir()
  if content is None:  # the right columns, a non-numeric value
    good = {'sample_complexity': 'K,L,n,trial,error,predicted_error\n3,10,x,0,0.1,0.1\n',
            'ccmc_example': 'quantity,row,col,value\nP,0,0,x\n'}
    content = good[name]
  (results / f'{name}.csv').write_text(content)
  r = run(module, '--plot_only', tmp=tmp_path)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and why in lines[0], r.stderr
  assert not os.path.exists(tmp_path / 'figures' / f'{name}.png')


@pytest.mark.parametrize('module', ['experiments.sample_complexity', 'experiments.collapse',
                                    'experiments.ccmc_example'])
def test_help_explains_the_flags(module):
  r = subprocess.run([sys.executable, '-m', module, '--help'], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0
  for flag in ('--seed', '--[no]quick', '--[no]resume', '--[no]plot_only', '--results_dir'):
    assert flag in r.stdout, flag


FIGURE_SCRIPTS = ['ccmc_example', 'attention_equivalence', 'sample_complexity', 'self_vs_cross',
                  'positional_encoding']


def docstring_example(name):
  """The flags of the ``python -m experiments.<name> ...`` example in the script's docstring."""
  with open(os.path.join(ROOT, 'experiments', f'{name}.py')) as f:
    source = f.read()
  line, = [l for l in source.splitlines() if l.strip().startswith(f'python -m experiments.{name}')]
  return source, line.split()[3:]


@pytest.mark.parametrize('name', FIGURE_SCRIPTS)
def test_docstring_example_names_real_flags(name):
  source, args = docstring_example(name)
  assert args, name
  for arg in args:
    flag, _, value = arg[2:].partition('=')
    assert arg.startswith('--') and value and '...' not in value, arg  # e.g. --n=1000,...,1e5
    assert f"'{flag}'" in source, f'{name}: --{flag} is not one of its flags'


def test_self_vs_cross_docstring_example_passes_validation(tmp_path):
  # Every flag of the example is checked before --results_dir, which is made unwritable here:
  # the one error is then about --results_dir, so the example itself is valid.
  _, args = docstring_example('self_vs_cross')
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  r = subprocess.run([sys.executable, '-m', 'experiments.self_vs_cross', *args,
                      f'--results_dir={blocker}/results', f'--figures_dir={tmp_path}/fig'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode == 2 and r.stderr.startswith('error: --results_dir='), r.stderr
