"""Check every claim of the paper (and of this suite) on the results CSVs (ccmc_jax.claims).

Prints a table (status, id, measured, expected, detail), writes <results_dir>/claims.csv and
claims.md (a Markdown table) and, with --readme (repeatable), refreshes the generated blocks of
each file given: the table between <!-- claims:begin --> and <!-- claims:end --> (docs/claims.md)
and the counts line between <!-- claims-summary:begin --> and <!-- claims-summary:end -->
(README.md). A claim whose CSV is missing is NOT RUN (not a pass). With --quick only the claims
that make sense at `run_all.sh --quick` settings are checked, with their quick tolerances
(ccmc_jax.claims.CLAIMS lists both).

Exit status: 0 when every run claim passes, 1 when one fails (or, with --require_all, one is
not run), 2 with one line `error: ...` on unreadable input (a malformed CSV, a missing column).

  python -m experiments.claims                                  # results/
  python -m experiments.claims --readme=README.md --readme=docs/claims.md  # refresh both
  python -m experiments.claims --quick --results_dir=results/quick
"""
from __future__ import annotations

import os
import sys

from absl import flags

from ccmc_jax import claims
from ccmc_jax import io
from ccmc_jax import text as text_lib
from experiments import common

# The flags of this script alone (not the experiment scripts' --seed, --figures_dir, ... nor
# absl's logging flags): a FlagValues of its own, so that tests can run it in-process too.
FLAGS = flags.FlagValues()
_RESULTS_DIR = flags.DEFINE_string('results_dir', 'results', 'Folder of the results CSVs.',
                                   flag_values=FLAGS)
_QUICK = flags.DEFINE_bool('quick', False, 'The CSVs come from a --quick run: check only the '
                           'claims that make sense there, with the quick tolerances.',
                           flag_values=FLAGS)
_OUTPUT = flags.DEFINE_string('output', None, 'The claims CSV (default <results_dir>/claims.csv'
                              '); the Markdown table goes beside it with the suffix .md. Empty '
                              'string: write neither.', flag_values=FLAGS)
_README = flags.DEFINE_multi_string(
    'readme', None, 'A Markdown file whose generated claims blocks are refreshed: the table '
    '(docs/claims.md) and the counts line (README.md); repeat the flag for several files.',
    flag_values=FLAGS)
_REQUIRE_ALL = flags.DEFINE_bool('require_all', False, 'Exit 1 when a claim is NOT RUN too '
                                 '(every CSV must be there).', flag_values=FLAGS)
_HELP = ('--help', '-h', '-?', '--helpshort', '--helpfull')


class Error(ValueError):
  """Bad flags: one line, exit status 2."""


def output_paths():
  """The claims CSV and Markdown paths of --output (None, None: write neither)."""
  out = _OUTPUT.value
  if out is None:
    out = os.path.join(_RESULTS_DIR.value, 'claims.csv')
  if not out:
    return None, None
  flag = f'--output={out}' if _OUTPUT.value is not None else f'--results_dir={_RESULTS_DIR.value}'
  if not out.endswith('.csv'):
    raise Error(f'{flag} is invalid: allowed values are a path ending in .csv, or ""')
  md = out[:-len('.csv')] + '.md'
  for path in (out, md):
    if os.path.isdir(path):
      raise Error(f'{flag} is invalid: {path} is a folder (allowed values are a path ending in '
                  '.csv, or "")')
  return out, md


def _check_no_overwrite(results_dir, readmes, csv_path, md_path):
  """Refuse an --output whose table would replace a results CSV read here, or a --readme."""
  if not csv_path:
    return
  written = {os.path.abspath(csv_path), os.path.abspath(md_path)}
  for name in claims.SCHEMAS:
    if os.path.abspath(os.path.join(results_dir, f'{name}.csv')) in written:
      raise Error(f'--output={csv_path} is invalid: it would overwrite the results CSV '
                  f'{name}.csv that the claims are checked on')
  for readme in readmes:
    if os.path.abspath(readme) in written:
      raise Error(f'--output={csv_path} is invalid: its Markdown table {md_path} would '
                  f'overwrite --readme={readme}')


def read_readmes(paths):
  """{path: text} of the --readme files, each checked (before any work) to be UTF-8 text with
  well-formed generated claims blocks, and given once."""
  texts = {}
  for path in paths:
    flag = f'--readme={path}'
    if os.path.abspath(path) in {os.path.abspath(p) for p in texts}:
      raise Error(f'{flag} is given twice (allowed values: different files)')
    try:
      text = text_lib.read_text_file(path)
    except text_lib.TextError as e:  # missing, a folder, unreadable, binary, empty
      raise Error(str(e).replace(path, flag, 1)) from None
    claims.refresh_blocks(text, None, '', flag)  # one line naming --readme on bad markers
    texts[path] = text
  return texts


def main(argv):
  if len(argv) > 1:
    raise Error(f'unexpected arguments {" ".join(argv[1:])} (flags look like --quick)')
  results_dir = _RESULTS_DIR.value
  if not os.path.isdir(results_dir):
    raise Error(f'--results_dir={results_dir} is not a folder')
  texts = read_readmes(_README.value or [])
  csv_path, md_path = output_paths()
  _check_no_overwrite(results_dir, texts, csv_path, md_path)

  try:
    results = claims.check(results_dir, quick=_QUICK.value)
  except OSError as e:  # a CSV that is there but cannot be read (a folder, no permission)
    raise Error(f'--results_dir={results_dir}: cannot read {e.filename} '
                f'({e.strerror or e})') from None
  print(claims.to_text(results))
  source = results_dir + (' (--quick)' if _QUICK.value else '')
  table = claims.to_markdown(results, source=source)
  files = []
  if csv_path:
    flag = f'--output={_OUTPUT.value}' if _OUTPUT.value else f'--results_dir={results_dir}'
    files += [(flag, csv_path, io.csv_text(claims.to_frame(results))), (flag, md_path, table)]
  for readme, text in texts.items():
    files.append((f'--readme={readme}', readme,
                  claims.refresh_blocks(text, results, source, readme)))
  io.atomic_write_texts(files)  # all staged first: a failure writes none
  if csv_path:
    print(f'wrote {csv_path} and {md_path}', file=sys.stderr)
  for readme in texts:
    print(f'refreshed the claims blocks of {readme}', file=sys.stderr)
  return claims.exit_status(results, _REQUIRE_ALL.value)


def run(argv=None):
  """Parse the flags and run ``main``; exits 0/1 (claims), or 2 with one line on bad input."""
  argv = sys.argv if argv is None else argv
  if set(_HELP) & set(argv[1:]):
    print(__doc__ + '\nflags:\n' + FLAGS.get_help(include_special_flags=False))
    sys.exit(0)
  FLAGS.unparse_flags()  # defaults for the flags not given (a second run in one process)
  rest = common.parse_flags(argv, FLAGS)
  try:
    status = main(rest)
  except (Error, io.UserError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # not expected: every file above is checked; still one line
    print(f'error: cannot use {e.filename} ({e.strerror or e})', file=sys.stderr)
    sys.exit(2)
  sys.exit(status)


if __name__ == '__main__':
  run()
