"""Check every claim of the paper (and of this suite) on the results CSVs (ccmc_jax.claims).

Prints a table (status, id, measured, expected, detail), writes <results_dir>/claims.csv and
claims.md (a Markdown table) and, with --readme, refreshes the generated block between
<!-- claims:begin --> and <!-- claims:end --> of that file. A claim whose CSV is missing is
NOT RUN (not a pass). With --quick only the claims that make sense at `run_all.sh --quick`
settings are checked, with their quick tolerances (ccmc_jax.claims.CLAIMS lists both).

Exit status: 0 when every run claim passes, 1 when one fails (or, with --require_all, one is
not run), 2 with one line `error: ...` on unreadable input (a malformed CSV, a missing column).

  python -m experiments.claims                                  # results/
  python -m experiments.claims --readme=README.md               # and refresh the README block
  python -m experiments.claims --quick --results_dir=results/quick
"""
from __future__ import annotations

import os
import sys

from absl import flags

from ccmc_jax import claims
from ccmc_jax import io

_RESULTS_DIR = flags.DEFINE_string('results_dir', 'results', 'Folder of the results CSVs.')
_QUICK = flags.DEFINE_bool('quick', False, 'The CSVs come from a --quick run: check only the '
                           'claims that make sense there, with the quick tolerances.')
_OUTPUT = flags.DEFINE_string('output', None, 'The claims CSV (default <results_dir>/claims.csv'
                              '); the Markdown table goes beside it with the suffix .md. Empty '
                              'string: write neither.')
_README = flags.DEFINE_string('readme', None, 'A Markdown file (e.g. README.md) whose block '
                              'between the claims markers is replaced by the table.')
_REQUIRE_ALL = flags.DEFINE_bool('require_all', False, 'Exit 1 when a claim is NOT RUN too '
                                 '(every CSV must be there).')


class Error(ValueError):
  """Bad flags: one line, exit status 2."""


def output_paths():
  out = _OUTPUT.value
  if out is None:
    out = os.path.join(_RESULTS_DIR.value, 'claims.csv')
  if not out:
    return None, None
  if not out.endswith('.csv'):
    raise Error(f'--output={out} is invalid: allowed values are a path ending in .csv, or ""')
  return out, out[:-len('.csv')] + '.md'


def main(argv):
  if len(argv) > 1:
    raise Error(f'unexpected arguments {" ".join(argv[1:])} (flags look like --quick)')
  if not os.path.isdir(_RESULTS_DIR.value):
    raise Error(f'--results_dir={_RESULTS_DIR.value} is not a folder')
  readme = _README.value
  if readme and not os.path.isfile(readme):
    raise Error(f'--readme={readme} is not a file')
  csv_path, md_path = output_paths()

  results = claims.check(_RESULTS_DIR.value, quick=_QUICK.value)
  print(claims.to_text(results))
  source = _RESULTS_DIR.value + (' (--quick)' if _QUICK.value else '')
  table = claims.to_markdown(results, source=source)
  new_readme = None
  if readme:
    with open(readme, encoding='utf-8') as f:
      new_readme = claims.replace_block(f.read(), table, readme)  # checked before any write
  if csv_path:
    io.write_csv(claims.to_frame(results), csv_path)
    io.atomic_write_text(md_path, table)
    print(f'wrote {csv_path} and {md_path}', file=sys.stderr)
  if new_readme is not None:
    io.atomic_write_text(readme, new_readme)
    print(f'refreshed the claims block of {readme}', file=sys.stderr)
  return claims.exit_status(results, _REQUIRE_ALL.value)


def run(argv=None):
  """Parse the flags and run ``main``; exits 0/1 (claims), or 2 with one line on bad input."""
  argv = sys.argv if argv is None else argv
  if {'--help', '-h', '--helpshort', '--helpfull'} & set(argv[1:]):
    print(__doc__ + '\nflags:\n' + flags.FLAGS.module_help(__name__ if __name__ != '__main__'
                                                           else sys.argv[0]))
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
    status = main(rest)
  except flags.Error as e:
    print(f'error: {str(e).splitlines()[0]}', file=sys.stderr)
    sys.exit(2)
  except (Error, io.ResultsError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  sys.exit(status)


if __name__ == '__main__':
  run()
