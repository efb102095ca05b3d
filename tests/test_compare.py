"""ccmc_jax.compare: exit 0 on identical tables, 1 beyond tolerance, 2 with one line on bad input."""
import json

import numpy as np
import pandas as pd
import pytest

from ccmc_jax import compare


def _table(seed=0):
  rng = np.random.default_rng(seed)
  rows = [{'K': K, 'n': n, 'trial': t, 'error': float(rng.random()), 'variant': 'a'}
          for K in (5, 10) for n in (100, 1000) for t in range(3)]
  return pd.DataFrame(rows)


def _write(tmp_path, name, df, keys=None):
  path = tmp_path / name
  df.to_csv(path, index=False)
  if keys is not None:
    (tmp_path / (name[:-4] + '.meta.json')).write_text(json.dumps({'keys': keys}))
  return str(path)


def _run(capsys, *argv):
  code = compare.main(list(argv))
  out = capsys.readouterr()
  return code, out.out, out.err


def test_identical_and_shuffled_agree(tmp_path, capsys):
  df = _table()
  a = _write(tmp_path, 'a.csv', df)
  b = _write(tmp_path, 'b.csv', df.sample(frac=1.0, random_state=1)[list(reversed(df.columns))])
  code, out, _ = _run(capsys, a, a)
  assert code == 0 and out.startswith('agree: 12 rows')
  code, out, _ = _run(capsys, a, b)  # row and column order do not matter
  assert code == 0, out


def test_perturbed_cell_is_reported(tmp_path, capsys):
  df = _table()
  bad = df.copy()
  bad.loc[7, 'error'] += 1e-3
  bad.loc[2, 'variant'] = 'b'
  a, b = _write(tmp_path, 'a.csv', df), _write(tmp_path, 'b.csv', bad)
  code, out, _ = _run(capsys, a, b)
  assert code == 1
  assert 'differ: 2 of 12 rows (2 cells)' in out
  assert 'error' in out and 'variant' in out
  # A tolerance larger than the perturbation hides the numeric one, not the string one.
  code, out, _ = _run(capsys, a, b, '--atol=1e-2')
  assert code == 1 and 'differ: 1 of 12 rows' in out


def test_tolerance_semantics_match_isclose():
  df = _table()
  other = df.copy()
  other['error'] = df['error'] * (1 + 5e-6)
  assert compare.compare_frames(df, other, ['K', 'n', 'trial'], rtol=1e-5).agree
  assert not compare.compare_frames(df, other, ['K', 'n', 'trial'], rtol=1e-6, atol=0).agree


def test_keys_inferred_from_meta_and_from_columns(tmp_path):
  df = _table()
  assert compare.infer_keys(df) == ['K', 'n', 'trial']
  a = _write(tmp_path, 'a.csv', df, keys=['K', 'n', 'trial'])
  assert compare.default_keys(a, df) == ['K', 'n', 'trial']


@pytest.mark.parametrize('case, needle', [
    ('missing_file', 'does not exist'),
    ('other_columns', 'different columns'),
    ('duplicate_keys', 'duplicate keys'),
    ('other_rows', 'different rows'),
    ('non_numeric', "non-numeric value 'abc' in column error"),
    ('bad_rtol', '--rtol'),
])
def test_malformed_input_exits_2_with_one_line(tmp_path, capsys, case, needle):
  df = _table()
  a = _write(tmp_path, 'a.csv', df)
  args = [a]
  if case == 'missing_file':
    args.append(str(tmp_path / 'nope.csv'))
  elif case == 'other_columns':
    args.append(_write(tmp_path, 'b.csv', df.drop(columns='variant')))
  elif case == 'duplicate_keys':
    args += [_write(tmp_path, 'b.csv', df), '--keys=K,n']
  elif case == 'other_rows':
    args.append(_write(tmp_path, 'b.csv', df.iloc[1:]))
  elif case == 'non_numeric':
    bad = df.astype({'error': object})
    bad.loc[3, 'error'] = 'abc'
    args.append(_write(tmp_path, 'b.csv', bad))
  elif case == 'bad_rtol':
    args += [a, '--rtol=-1']
  if case == 'bad_rtol':  # argparse errors exit from inside parse_args
    with pytest.raises(SystemExit) as exc:
      compare.main(args)
    code, err = exc.value.code, capsys.readouterr().err
  else:
    code, _, err = _run(capsys, *args)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and needle in lines[0], err
