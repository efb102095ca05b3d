"""The command lines' answers to bad input (issue 14): ``python -m experiments.claims`` and the
experiment scripts' ``common.parse_flags`` give one line ``error: --flag=value ...`` and exit
status 2, write no file, suggest only the scripts' own flags for a typo (never absl's internal
ones such as --stderrthreshold), and name the flag for unreadable or unwritable paths. Run
in-process (``experiments.claims`` has a FlagValues of its own)."""
import os

import pytest

from ccmc_jax import claims
from experiments import claims as script
from experiments import common

BLOCK = f'intro\n{claims.README_BEGIN}\nold table\n{claims.README_END}\nrest\n'


def _run(*args, argv0='claims'):
  with pytest.raises(SystemExit) as e:
    script.run([argv0, *args])
  return e.value.code


def _snapshot(folder):
  """Every file under ``folder`` with its bytes: 'no file written' and 'none changed'."""
  out = {}
  for root, _, files in os.walk(folder):
    for f in files:
      path = os.path.join(root, f)
      if os.path.isfile(path):
        with open(path, 'rb') as fh:
          out[path] = fh.read()
  return out


@pytest.fixture
def tree(tmp_path):
  """An (empty) results folder, a README with a claims block, and files of the wrong kind."""
  (tmp_path / 'results').mkdir()
  (tmp_path / 'README.md').write_text(BLOCK)
  (tmp_path / 'binary.md').write_bytes(b'\xff\xfe\x00 not text')
  (tmp_path / 'noblock.md').write_text('# a README without the claims markers\n')
  (tmp_path / 'twoblocks.md').write_text(BLOCK + BLOCK)
  (tmp_path / 'afile').write_text('x\n')
  (tmp_path / 'folder.csv').mkdir()
  return tmp_path


# (arguments, the flag the line must start with, words it must hold, words it must not hold)
BAD = [
    (['--bogus_flag'], '--bogus_flag ', ['not a flag of this script', '--help'], ['Unknown']),
    (['--bogus_flag=3'], '--bogus_flag=3 ', ['not a flag'], []),
    (['--reqire_all'], '--reqire_all ', ['did you mean --require_all?'], []),
    (['--sede'], '--sede ', [], ['stderrthreshold', 'Unknown']),
    (['--stderrthreshol=1'], '--stderrthreshol=1 ', [], ['--stderrthreshold']),
    (['--quick=maybe'], '--quick=maybe ', ['true or false'], []),
    (['--results_dir'], '--results_dir ', ['has no value'], []),
    (['--flagfile={t}/nope'], '--flagfile={t}/nope ', ['cannot be read'], ['ERROR']),
    (['--results_dir={t}/nope'], '--results_dir={t}/nope ', ['not a folder'], []),
    (['--results_dir={t}/afile'], '--results_dir={t}/afile ', ['not a folder'], []),
    (['--readme={t}/binary.md'], '--readme={t}/binary.md ', ['not UTF-8'], []),
    (['--readme={t}/noblock.md'], '--readme={t}/noblock.md ', [claims.README_BEGIN], []),
    (['--readme={t}/twoblocks.md'], '--readme={t}/twoblocks.md ', ['exactly one'], []),
    (['--readme={t}/nope.md'], '--readme={t}/nope.md ', ['does not exist'], []),
    (['--readme={t}/README.md', '--readme={t}/README.md'], '--readme={t}/README.md ',
     ['given twice'], []),
    (['--readme={t}/README.md', '--readme={t}/noblock.md'], '--readme={t}/noblock.md ',
     [claims.SUMMARY_BEGIN], []),
    (['--readme={t}'], '--readme={t} ', ['not a file'], []),
    (['--output=/proc/x/claims.csv'], '--output=/proc/x/claims.csv', ['cannot write'], []),
    (['--output={t}/afile/claims.csv'], '--output={t}/afile/claims.csv', ['Not a directory'],
     ['File exists']),
    (['--output={t}/folder.csv'], '--output={t}/folder.csv ', ['is a folder'], []),
    (['--output={t}/claims.txt'], '--output={t}/claims.txt ', ['ending in .csv'], []),
    (['--output={t}/results/collapse.csv'], '--output={t}/results/collapse.csv ',
     ['would overwrite the results CSV collapse.csv'], []),
    (['--readme={t}/README.md', '--output={t}/README.csv'], '--output={t}/README.csv ',
     ['would overwrite --readme='], []),
    # A good README and a bad --output: the README must stay as it was.
    (['--readme={t}/README.md', '--output=/proc/x/claims.csv'], '--output=/proc/x/claims.csv',
     ['cannot write'], []),
]


@pytest.mark.parametrize('args,flag,needles,absent', BAD, ids=[' '.join(b[0]) for b in BAD])
def test_claims_bad_input_is_one_line_naming_the_flag(tree, capsys, args, flag, needles,
                                                      absent):
  before = _snapshot(tree)
  args = [a.format(t=tree) for a in args]
  if not any(a.startswith('--results_dir') for a in args):
    args.append(f'--results_dir={tree}/results')
  assert _run(*args) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1, err
  assert err.startswith(f'error: {flag.format(t=tree)}'), err
  for word in needles:
    assert word in err, err
  for word in absent:
    assert word not in err, err
  assert _snapshot(tree) == before  # no file written, none changed


def test_claims_writes_the_tables_and_refreshes_the_readme(tree, capsys):
  readme = tree / 'README.md'
  out = tree / 'out' / 'claims.csv'
  assert _run(f'--results_dir={tree}/results', f'--output={out}', f'--readme={readme}') == 0
  assert 'wrote' in capsys.readouterr().err
  text = readme.read_text()
  assert text.startswith('intro\n') and text.endswith('rest\n') and 'old table' not in text
  assert 'NOT RUN' in text and out.exists() and (tree / 'out' / 'claims.md').exists()
  leftovers = [f for f in os.listdir(tree) + os.listdir(tree / 'out') if f.endswith('.tmp')]
  assert not leftovers
  # A second run in the same process starts from the defaults (no --output/--readme kept).
  assert _run(f'--results_dir={tree}/results', '--require_all') == 1
  assert (tree / 'results' / 'claims.csv').exists()


def test_claims_refreshes_the_table_of_one_file_and_the_counts_of_another(tree, capsys):
  """run_all.sh's line: the docs page gets the table, the README the counts line."""
  readme = tree / 'README.md'
  readme.write_text(f'intro\n{claims.SUMMARY_BEGIN}\nold\n{claims.SUMMARY_END}\nrest\n')
  doc = tree / 'claims.md'
  doc.write_text(BLOCK)
  assert _run(f'--results_dir={tree}/results', '--output=', f'--readme={readme}',
              f'--readme={doc}') == 0
  counts = claims.counts(claims.check(str(tree / 'results')))
  text = readme.read_text()
  assert text.startswith(f'intro\n{claims.SUMMARY_BEGIN}\nGenerated by `python -m '
                         f'experiments.claims` from `{tree}/results`: **{counts}**. NOT RUN: ')
  assert text.endswith(f'{claims.SUMMARY_END}\nrest\n')
  assert '| claim |' not in text and '| claim |' in doc.read_text()
  assert 'old' not in readme.read_text() + doc.read_text()
  assert capsys.readouterr().err.count('refreshed the claims blocks') == 2


def test_claims_help_lists_only_its_flags(capsys):
  assert _run('--help') == 0
  out = capsys.readouterr().out
  assert '--readme' in out and '--require_all' in out
  assert '--stderrthreshold' not in out and '--seed' not in out


@pytest.mark.parametrize('typo,near', [('sede', '--seed'), ('resutls_dir', '--results_dir'),
                                       ('stderrthreshol', None), ('logtostder', None)])
def test_common_parse_flags_suggests_only_script_flags(capsys, typo, near):
  """The experiment scripts (common.parse_flags): a typo gets the nearest of the scripts'
  flags, never absl's internal ones (--stderrthreshold, --logtostderr, ...)."""
  with pytest.raises(SystemExit) as e:
    common.parse_flags(['script', f'--{typo}'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith(f'error: --{typo} '), err
  assert 'stderrthreshold' not in err and 'logtostderr' not in err, err
  if near:
    assert f'did you mean {near}' in err, err
  else:
    assert '(see --help)' in err, err



@pytest.mark.parametrize('arg,needle', [
    ('--stderrthreshold=x', "--stderrthreshold=x is invalid: allowed values are 'debug'"),
    ('--logger_levels=a:b', '--logger_levels=a:b is invalid: '),
])
def test_common_parse_flags_absl_logging_flag_values_are_one_line(capsys, arg, needle):
  """absl's logging flags check some values in a setter (a ValueError, not a flags.Error):
  one line naming the flag too, not a traceback."""
  with pytest.raises(SystemExit) as e:
    common.parse_flags(['script', arg])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith(f'error: {needle}'), err

# --- compare: the "keys" of a sidecar --------------------------------------------------------

@pytest.mark.parametrize('keys,needle', [
    ('"K"', 'is not a list of column names'),
    ('[1]', 'is not a list of column names'),
    ('[]', 'is not a list of column names'),  # was: silently inferred keys instead
    ('["K", "K"]', 'is not a list of column names'),  # was: accepted
    ('[""]', 'is not a list of column names'),
    ('["zz"]', '"keys" names column(s) zz'),  # was: not naming the sidecar
])
@pytest.mark.parametrize('side', ['a', 'b'])
def test_compare_sidecar_keys_of_the_wrong_shape_is_one_line(tmp_path, capsys, keys, needle,
                                                             side):
  from ccmc_jax import compare
  paths = {s: tmp_path / f'{s}.csv' for s in 'ab'}
  for p in paths.values():
    p.write_text('K,x\n1,0.5\n2,0.7\n')
  (tmp_path / f'{side}.meta.json').write_text(f'{{"keys": {keys}}}')
  assert compare.main([str(paths['a']), str(paths['b'])]) == 2
  out = capsys.readouterr()
  lines = out.err.strip().splitlines()
  assert out.out == '' and len(lines) == 1, out
  assert lines[0].startswith(f'error: {tmp_path / side}.meta.json: ') and needle in lines[0]
