"""A rerun checked against the committed reference (issue 14 items 7-8): per-column tolerances
recorded in the sidecars, folder and --reference modes, and every odd file given to compare
answered by one line (exit 2) instead of a traceback or a silent wrong answer."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from ccmc_jax import compare
from ccmc_jax import tolerances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'results')


def _run(capsys, *argv):
  code = compare.main([str(a) for a in argv])
  out = capsys.readouterr()
  return code, out.out, out.err


def _one_error_line(err, needle):
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and needle in lines[0], err


def _write(path, text, meta=None):
  path.write_text(text)
  if meta is not None:
    meta_path = str(path)[:-4] + '.meta.json'
    with open(meta_path, 'w') as f:
      f.write(meta if isinstance(meta, str) else json.dumps(meta))
  return str(path)


# --- item 7: odd files -------------------------------------------------------------------------

def test_header_only_tables_agree_with_zero_rows_and_differ_from_a_full_one(tmp_path, capsys):
  a = _write(tmp_path / 'a.csv', 'K,n,error\n', {'keys': ['K', 'n']})
  b = _write(tmp_path / 'b.csv', 'K,n,error\n')
  full = _write(tmp_path / 'full.csv', 'K,n,error\n5,10,0.5\n')
  code, out, err = _run(capsys, a, b)
  assert code == 0 and out.startswith('agree: 0 rows') and 'both tables are empty' in out, err
  for x, y in ((a, full), (full, a)):
    code, out, err = _run(capsys, x, y)
    assert code == 2
    _one_error_line(err, 'different rows')


def test_integer_keys_beyond_2_53_are_matched_exactly(tmp_path, capsys):
  big = 2**53  # big and big + 1 are one float64
  a = _write(tmp_path / 'a.csv', f'seed,error\n{big},0.25\n{big + 1},0.5\n')
  b = _write(tmp_path / 'b.csv', f'seed,error\n{big + 1},0.5\n{big},0.25\n')
  code, out, err = _run(capsys, a, b)
  assert code == 0 and out.startswith('agree: 2 rows'), out + err
  swapped = _write(tmp_path / 's.csv', f'seed,error\n{big},0.5\n{big + 1},0.25\n')
  code, out, _ = _run(capsys, a, swapped)
  assert code == 1 and 'differ: 2 of 2 rows' in out and str(big + 1) in out
  other = _write(tmp_path / 'o.csv', f'seed,error\n{big},0.25\n{big + 2},0.5\n')
  code, _, err = _run(capsys, a, other)
  assert code == 2
  _one_error_line(err, f'1 only in {a} (e.g. seed={big + 1})')
  # An integer value column is compared in integers, not through float64.
  c = _write(tmp_path / 'c.csv', f'K,count\n1,{big}\n')
  d = _write(tmp_path / 'd.csv', f'K,count\n1,{big + 1}\n')
  code, out, _ = _run(capsys, c, d, '--keys=K', '--rtol=0', '--atol=0')
  assert code == 1 and 'differ: 1 of 1 rows' in out


CORRUPT = ('is not valid JSON', 'is not a readable metadata sidecar')  # compare's, io.read_meta's


@pytest.mark.parametrize('meta, needle', [
    ('{"keys": [', CORRUPT),
    ('[1, 2]', ('JSON list',)),
    ('"text"', ('JSON str',)),
    ('{"keys": "K"}', ('"keys" is not a list of column names',)),
    ('{"tolerances": {"error": {"rtol": -1, "atol": 0}}}', ('rtol=-1 is not a finite number',)),
    ('{"tolerances": [1]}', ('tolerances is a list',)),
    (b'\xff\xfe{', CORRUPT),
])
@pytest.mark.parametrize('side', ['a', 'b'])
def test_corrupt_or_non_object_sidecar_is_one_line(tmp_path, capsys, meta, needle, side):
  good = _write(tmp_path / 'good.csv', 'K,error\n1,0.5\n')
  bad = _write(tmp_path / 'bad.csv', 'K,error\n1,0.5\n')
  meta_path = tmp_path / 'bad.meta.json'
  meta_path.write_bytes(meta if isinstance(meta, bytes) else meta.encode())
  code, _, err = _run(capsys, *((bad, good) if side == 'a' else (good, bad)))
  assert code == 2
  _one_error_line(err, 'bad.meta.json')
  assert any(n in err for n in needle), err


@pytest.mark.parametrize('case, needle', [
    ('empty', 'is not a readable CSV'),
    ('binary', 'is not a readable CSV'),
    ('folder', 'is a folder, not a CSV file'),
    ('duplicate_header', "names column 'K' twice"),
    ('ragged', 'is not a readable CSV'),
    ('missing_key', 'key column(s) Z not in the tables'),
    ('no_arguments', 'give two results CSVs, two folders, or --reference'),
    ('device', 'is not a regular file'),
])
def test_odd_files_are_one_line(tmp_path, capsys, case, needle):
  good = _write(tmp_path / 'good.csv', 'K,error\n1,0.5\n')
  odd = tmp_path / 'odd.csv'
  args = [good, str(odd)]
  if case == 'empty':
    odd.write_text('')
  elif case == 'binary':
    odd.write_bytes(bytes(range(256)) * 4)
  elif case == 'folder':
    odd.mkdir()
  elif case == 'duplicate_header':
    odd.write_text('K,K,error\n1,1,0.5\n')  # pandas would silently rename one to K.1
    args = [str(odd), str(odd)]
  elif case == 'ragged':
    odd.write_text('K,error\n1,0.5,7,8\n2\n')
  elif case == 'missing_key':
    args = [good, good, '--keys=Z']
  elif case == 'no_arguments':
    args = [good]
  elif case == 'device':
    args = [os.devnull, good]  # today: 'results file /dev/null does not exist'
  code, out, err = _run(capsys, *args)
  assert code == 2 and out == ''
  _one_error_line(err, needle)


def test_nan_and_inf_cells(tmp_path, capsys):
  a = _write(tmp_path / 'a.csv', 'K,error\n1,nan\n2,inf\n3,-inf\n4,1.0\n')
  code, out, _ = _run(capsys, a, a)
  assert code == 0 and out.startswith('agree: 4 rows'), out  # NaN == NaN, inf == inf
  b = _write(tmp_path / 'b.csv', 'K,error\n1,1.0\n2,-inf\n3,-inf\n4,nan\n')
  code, out, _ = _run(capsys, a, b)
  assert code == 1 and 'differ: 3 of 4 rows (3 cells)' in out, out


# --- item 8: per-column tolerances, recorded in the sidecar ----------------------------------

def _ill_conditioned(tmp_path, recorded=True):
  """A sample-complexity-like pair: error agrees to 1e-7 relative, error_W to 3e-3."""
  rows = 'K,n,trial,error,error_W\n' + ''.join(
      f'5,{n},{t},{0.01 * (t + 1)},{1.0 + t}\n' for n in (100, 1000) for t in range(3))
  moved = 'K,n,trial,error,error_W\n' + ''.join(
      f'5,{n},{t},{0.01 * (t + 1) * (1 + 1e-7)},{(1.0 + t) * (1 + 3e-3)}\n'
      for n in (100, 1000) for t in range(3))
  meta = {'keys': ['K', 'n', 'trial']}
  if recorded:
    meta['tolerances'] = {'error': {'rtol': 1e-5, 'atol': 1e-8},
                          'error_W': {'rtol': 1e-3, 'atol': 0, 'informational': True}}
  return _write(tmp_path / 'ref.csv', rows, meta), _write(tmp_path / 'new.csv', moved)


def test_sidecar_tolerances_are_the_default_and_informational_columns_never_fail(tmp_path,
                                                                                capsys):
  ref, new = _ill_conditioned(tmp_path)
  code, out, _ = _run(capsys, ref, new)
  assert code == 0, out
  lines = out.strip().splitlines()
  assert lines[0].startswith('agree: 6 rows x 1 columns within the recorded per-column')
  assert lines[1].startswith('informational (reported, never a failure): error_W: max |a-b|')
  assert '6 cells beyond rtol=0.001' in lines[1]
  # Explicit tolerances apply to every column, the informational ones included.
  code, out, _ = _run(capsys, ref, new, '--rtol=1e-5')
  assert code == 1 and 'differ: 6 of 6 rows (6 cells) beyond rtol=1e-05 atol=1e-08' in out
  code, out, _ = _run(capsys, ref, new, '--rtol=1e-2')
  assert code == 0


def test_tolerances_of_a_known_table_apply_without_a_recorded_field(tmp_path):
  """Sidecars written before the tolerances were recorded: the table's name picks them."""
  ref, new = _ill_conditioned(tmp_path, recorded=False)
  os.rename(ref, tmp_path / 'sample_complexity.csv')
  report = compare.compare_files(str(tmp_path / 'sample_complexity.csv'), new,
                                 keys=['K', 'n', 'trial'])
  assert report.agree and 'error_W' in report.informational
  assert report.tolerances['error'] == tolerances.TABLES['sample_complexity']['error']


def test_every_column_of_every_committed_table_has_a_tolerance():
  """New columns need a measured tolerance (docs/reproducing.md): none falls back to the
  default silently."""
  missing = []
  for name in sorted(os.listdir(RESULTS)):
    if not name.endswith('.csv'):
      continue
    table = name[:-4]
    path = os.path.join(RESULTS, name)
    meta = compare.read_sidecar(path) or {}
    keys = meta.get('keys') or tolerances.KEYS.get(table)
    assert keys, f'{name}: no key columns recorded'
    columns = pd.read_csv(path, nrows=0).columns
    listed = tolerances.TABLES.get(table, {})
    missing += [f'{table}.{c}' for c in columns if c not in keys and c not in listed]
    assert not set(listed) - set(columns), f'{table}: tolerances of unknown columns'
    record = tolerances.for_table(table)
    assert tolerances.parse(json.loads(json.dumps(record))) == listed  # sidecar round trip
  assert not missing, f'columns without a tolerance: {missing}'


def test_results_finish_records_the_tolerances(tmp_path):
  from absl import flags
  from absl.testing import flagsaver
  from experiments import common
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(results_dir=str(tmp_path)):
    results = common.Results('sample_complexity', ['K'], {'K': 5})
    results.add({'K': [5], 'error': [0.1]})
    results.finish()
  meta = json.loads((tmp_path / 'sample_complexity.meta.json').read_text())
  assert meta['tolerances'] == tolerances.for_table('sample_complexity')


# --- item 8: folders and the committed reference ------------------------------------------------

def _copy(names, dest):
  dest.mkdir(exist_ok=True)
  for name in names:
    for ext in ('.csv', '.meta.json'):
      src = os.path.join(RESULTS, name + ext)
      if os.path.exists(src):
        shutil.copy(src, dest / (name + ext))
  return dest


def test_folders_compare_every_common_table(tmp_path, capsys):
  ref = _copy(['ccmc_example', 'self_vs_cross_graph'], tmp_path / 'ref')
  new = _copy(['ccmc_example'], tmp_path / 'new')
  code, out, err = _run(capsys, ref, new)
  assert code == 0, out + err
  assert 'ccmc_example.csv: agree: 46 rows' in out
  assert 'not compared: 1 CSV(s) in' in out and 'self_vs_cross_graph.csv' in out
  last = out.strip().splitlines()[-1]
  assert last == 'agree: all 1 tables within the recorded per-column tolerances'
  df = pd.read_csv(new / 'ccmc_example.csv')
  df.loc[df.index[-1], 'value'] += 0.5
  df.to_csv(new / 'ccmc_example.csv', index=False)
  code, out, _ = _run(capsys, ref, new)
  assert code == 1 and 'ccmc_example.csv: differ: 1 of 46 rows' in out
  assert out.strip().splitlines()[-1].startswith('differ: 1 of 1 tables (ccmc_example.csv)')


def test_reference_mode_compares_with_the_committed_results(tmp_path, capsys):
  """`python -m ccmc_jax.compare --reference DIR` after `run_all.sh --results_dir=DIR`: the
  reference comes from git (run_all.sh rewrites results/ in place)."""
  rerun = tmp_path / 'rerun'
  rerun.mkdir()
  ref = tmp_path / 'head'
  ref.mkdir()
  compare.export_reference('HEAD', str(ref))
  for f in ('sample_complexity.csv', 'sample_complexity.meta.json'):
    shutil.copy(ref / f, rerun / f)
  code, out, err = _run(capsys, '--reference', rerun)
  assert code == 0, out + err
  assert 'sample_complexity.csv: agree: 700 rows' in out
  assert 'not compared:' in out and f'in HEAD:results only (not in {rerun})' in out
  # The README's old recipe without --L_sweep=5,20: the hint names the flag.
  df = pd.read_csv(rerun / 'sample_complexity.csv')
  df[df['L'] == 10].to_csv(rerun / 'sample_complexity.csv', index=False)
  meta = json.loads((rerun / 'sample_complexity.meta.json').read_text())
  meta['flags']['L_sweep'] = []
  (rerun / 'sample_complexity.meta.json').write_text(json.dumps(meta))
  code, out, err = _run(capsys, '--reference', rerun)
  assert code == 2 and 'sample_complexity.csv: error: different rows' in err
  assert "--L_sweep=['5', '20'] vs []" in err
  assert out.strip().splitlines()[-1].startswith('error: 1 of 1 tables could not be compared')


def test_reference_mode_outside_a_checkout_is_one_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(compare, '_git_root', lambda: None)
  code, _, err = _run(capsys, '--reference', tmp_path)
  assert code == 2
  _one_error_line(err, '--reference needs a git checkout of ccmc-jax')
  monkeypatch.undo()
  code, _, err = _run(capsys, '--reference', '--rev=no-such-revision', tmp_path)
  assert code == 2
  _one_error_line(err, '--rev=no-such-revision: no results/ at that revision')
  code, _, err = _run(capsys, '--reference', tmp_path / 'nope')
  assert code == 2
  _one_error_line(err, 'is not a folder')
  code, _, err = _run(capsys, '--reference', '--keys=K', tmp_path)
  assert code == 2
  _one_error_line(err, '--keys=K names the key columns of one table')


def test_regenerated_outputs_do_not_make_the_code_dirty(tmp_path):
  """run_all.sh rewrites results/, figures/, docs/claims.md and the README's claims counts: the
  sidecars of a fresh clone's rerun record the plain commit; a code change still says +dirty."""
  import subprocess
  from ccmc_jax import io
  git = lambda *a: subprocess.run(['git', *a], cwd=tmp_path, check=True, capture_output=True)
  for f in ('ccmc_jax/model.py', 'results/a.csv', 'figures/a.png', 'README.md', 'docs/claims.md'):
    (tmp_path / f).parent.mkdir(exist_ok=True)
    (tmp_path / f).write_text('x\n')
  git('init', '-q')
  git('add', '-A')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'c')
  head = git('rev-parse', 'HEAD').stdout.decode().strip()
  for f in ('results/a.csv', 'figures/a.png', 'README.md', 'docs/claims.md'):
    (tmp_path / f).write_text('regenerated\n')
  assert io.git_commit(str(tmp_path / 'ccmc_jax')) == head
  (tmp_path / 'ccmc_jax/model.py').write_text('changed\n')
  assert io.git_commit(str(tmp_path)) == head + '+dirty'
