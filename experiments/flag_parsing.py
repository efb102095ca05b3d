"""absl's flag parsing with its errors as one line, ``error: --flag=value ...`` and exit status 2:
the flag, what it accepts and, for an unknown or misspelt flag, the nearest flags of the script.

Imports only absl, so that ``experiments.claims`` (which has flags of its own) and
``experiments.common`` (the flags of every experiment script) share it.
"""
from __future__ import annotations

import difflib
import os
import re
import sys

from absl import flags

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


def parse(argv, flag_values=None):
  """``flag_values(argv)`` (default ``absl.flags.FLAGS``); a parse error prints one line
  ``error: ...`` on stderr and exits 2."""
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
