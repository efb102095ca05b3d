"""README.md and docs/*.md cannot rot: every relative link points at an existing file (and, with
a ``#fragment``, at a heading of it by GitHub's anchor rules), and every ``python -m module ...``
written in them names a module that exists and only flags that the module's ``--helpfull``
lists. The checker is fed broken docs too (a missing file, a missing anchor, a missing module, a
flag that does not exist), so it is shown to fail.

The flags of all modules come from one helper process: it imports JAX and the library once, then
forks a child per module that runs it as ``python -m module --helpfull`` would (``runpy``), in a
scratch folder, and reads the flag names off the help text.
"""
import functools
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ['README.md'] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
PROJECT = {d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, '__init__.py'))}

FENCE = re.compile(r'^(```|~~~).*?^\1[ \t]*$', re.M | re.S)
INLINE = re.compile(r'(`+)(.+?)\1', re.S)
LINK = re.compile(r'\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HTML_LINK = re.compile(r'<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*"([^"]+)"', re.I)
HTML_ANCHOR = re.compile(r'<a\b[^>]*?\b(?:id|name)\s*=\s*"([^"]+)"', re.I)
HEADING = re.compile(r'^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$', re.M)
COMMAND = re.compile(r'\bpython3? -m ([\w.]+)(.*)')
SHELL_OPS = {'&', '&&', ';', '|', '||', '>', '>>', '<', '2>', ')', '#'}
HELP_LINE = re.compile(r'^ {2}(?:-[^\s,-],\s*)?--(\[no\])?([A-Za-z_]\w*)', re.M)


def _read(path):
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    return f.read()


def prose(text):
  """``text`` without fenced code blocks and inline code (links there are not links)."""
  return INLINE.sub('', FENCE.sub('', text))


def code(text):
  """The fenced code blocks and inline code spans of ``text``, one string each."""
  blocks = [m.group(0) for m in FENCE.finditer(text)]
  spans = [m.group(2) for m in INLINE.finditer(FENCE.sub('', text))]
  return blocks + spans


def slug(heading):
  """GitHub's anchor of a heading: the rendered text lower-cased, everything but letters,
  digits, marks, '_', '-' and spaces dropped, spaces turned into '-'."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link keeps its text
  text = re.sub(r'<[^>]+>', '', text).replace('`', '').replace('*', '')
  text = ''.join(c for c in text.strip().lower()
                 if c in ' -_' or unicodedata.category(c)[0] in 'LMN')
  return text.replace(' ', '-')


def anchors(text):
  """Every anchor of a Markdown text: heading slugs (a repeated one gets -1, -2, ...) and
  explicit <a id=...> / <a name=...>."""
  seen, out = {}, set()
  for m in HEADING.finditer(FENCE.sub('', text)):
    s = slug(m.group(2))
    out.add(s if s not in seen else f'{s}-{seen[s]}')
    seen[s] = seen.get(s, 0) + 1
  return out | set(HTML_ANCHOR.findall(text))


def broken_links(text, doc_dir, read=_read):
  """The relative links of ``text`` (a doc in folder ``doc_dir`` of the repository) that point at
  no file, or at no anchor of a Markdown file; one line each."""
  problems = []
  body = prose(text)
  for target in LINK.findall(body) + HTML_LINK.findall(body):
    if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I):  # https:, mailto:
      continue
    path, _, fragment = target.partition('#')
    rel = os.path.normpath(os.path.join(doc_dir, path)) if path else None
    if rel is not None and not os.path.exists(os.path.join(ROOT, rel)):
      problems.append(f'{target}: no file {rel}')
      continue
    md = rel is None or rel.endswith('.md')
    if fragment and md and fragment not in anchors(text if rel is None else read(rel)):
      problems.append(f'{target}: no heading or anchor #{fragment}')
  return problems


def commands(text):
  """``(module, [flag names])`` of every ``python -m module ...`` in the code of ``text``."""
  out = []
  for snippet in code(text):
    for line in snippet.splitlines():
      for m in COMMAND.finditer(line):
        module = m.group(1)
        if module.endswith('.'):  # a placeholder: python -m experiments.<name>
          continue
        rest = m.group(2)
        try:
          tokens = list(shlex.shlex(rest, posix=True, punctuation_chars='&;|<>()'))
        except ValueError:  # an unbalanced quote in prose-like code: plain words
          tokens = rest.split()
        flags = []
        for tok in tokens:
          if tok in SHELL_OPS or tok.startswith('#'):
            break
          if tok.startswith('-') and tok != '-':
            flags.append(tok.lstrip('-').split('=', 1)[0])
        out.append((module, flags))
  return out


_HELPER = r'''
import importlib, importlib.util, json, os, pkgutil, runpy, sys, tempfile, time
root, FAILED, modules = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, root)
import matplotlib
matplotlib.use('Agg')
import jax, numpy, pandas, matplotlib.pyplot  # once, before the forks
import ccmc_jax
for m in pkgutil.walk_packages(ccmc_jax.__path__, 'ccmc_jax.'):
  if m.name not in modules:  # those run as __main__ below
    importlib.import_module(m.name)
scratch = tempfile.mkdtemp(prefix='test_docs_')


def help_text(module, flag):
  log = os.path.join(scratch, module + flag + '.txt')
  pid = os.fork()
  if pid == 0:  # the child: python -m module --helpfull, output to the log
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(scratch)
    sys.argv = [module, flag]
    try:
      runpy.run_module(module, run_name='__main__', alter_sys=True)
    except BaseException as e:  # SystemExit from the help, or a failure to report
      if not isinstance(e, SystemExit):
        print(f'{FAILED} {type(e).__name__}: {e}')
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
  deadline = time.time() + 60
  while os.waitpid(pid, os.WNOHANG) == (0, 0):
    if time.time() > deadline:  # a module that ignores --help and starts working
      os.kill(pid, 9)
      os.waitpid(pid, 0)
      return f'{module} {flag} did not end within 60 s'
    time.sleep(0.02)
  with open(log, encoding='utf-8', errors='replace') as f:
    return f.read()


out = {}
for module in modules:
  try:
    found = importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    found = False
  if not found:
    out[module] = None
    continue
  out[module] = help_text(module, '--helpfull')  # absl: every flag, the script's and absl's
  if 'unrecognized arguments: --helpfull' in out[module]:  # argparse
    out[module] = help_text(module, '--help')
print(json.dumps(out))
'''

_HELP = {}
FAILED = 'test_docs: running the module failed:'


def helps(modules):
  """{module: its --helpfull text, or None when there is no such module}; one helper process
  for the modules not seen before in this test process."""
  todo = sorted({m for m in modules if m not in _HELP and m.split('.')[0] in PROJECT})
  if todo:
    r = subprocess.run([sys.executable, '-c', _HELPER, ROOT, FAILED, *todo], capture_output=True,
                       text=True, timeout=240, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert r.returncode == 0, r.stderr[-2000:]
    _HELP.update(json.loads(r.stdout.strip().splitlines()[-1]))
  return {m: _HELP.get(m) for m in modules}


@functools.lru_cache(maxsize=None)
def _exists(module):
  import importlib.util
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def bad_commands(text):
  """The ``python -m`` commands of ``text`` whose module does not exist or that give a flag the
  module's ``--helpfull`` does not list; one line each. Modules outside this repository
  (``pytest``) are only looked up."""
  found = commands(text)
  texts = helps({m for m, _ in found})
  problems = []
  for module, flags in found:
    if module.split('.')[0] not in PROJECT:
      if not _exists(module):
        problems.append(f'python -m {module}: no such module')
      continue
    help_text = texts[module]
    if help_text is None:
      problems.append(f'python -m {module}: no such module')
      continue
    if FAILED in help_text or 'did not end within' in help_text:
      problems.append(f'python -m {module}: {help_text.strip().splitlines()[-1]}')
      continue
    known = set()  # none for a script without flags (benchmarks.memory takes names)
    for no, name in HELP_LINE.findall(help_text):
      known |= {name, f'no{name}'} if no else {name}
    problems += [f'python -m {module} --{f}: not a flag of the module' for f in flags
                 if f not in known]
  return problems


@pytest.mark.parametrize('doc', DOCS)
def test_relative_links_point_at_files_and_anchors(doc):
  assert broken_links(_read(doc), os.path.dirname(doc)) == []


def test_python_m_commands_name_modules_and_flags_that_exist():
  problems = [f'{doc}: {p}' for doc in DOCS for p in bad_commands(_read(doc))]
  assert problems == []
  # The check saw the commands it is meant to see (a parser that finds none cannot fail).
  found = {m for doc in DOCS for m, _ in commands(_read(doc))}
  assert {'experiments.sample_complexity', 'ccmc_jax.compare', 'experiments.claims',
          'benchmarks.large_k', 'pytest'} <= found


BROKEN = '''# A page

## Real heading

[fine](#real-heading) [fine too](../README.md#figures) [file](../run_all.sh)
[gone](missing.md) [no anchor](#not-a-heading) [other page, no anchor](../README.md#nope)
![no image](../figures/nope.png) <img src="../figures/nope2.png">
`[not a link](inside-code.md)`

```bash
python -m experiments.ccmc_example --X=0,1,0 --noplot_only    # fine
python -m experiments.ccmc_example --no_such_flag=3 --W=1,2,3,4
python -m experiments.no_such_module --K=3
python -m ccmc_jax.compare --reference /tmp/x --no_such_option & wait
python -m experiments.claims --readme=README.md --bogus
python -m benchmarks.memory collapse --K=3
python -m experiments.plots    # a package: cannot be run
```
'''


def test_a_broken_doc_fails_the_checks():
  links = broken_links(BROKEN, 'docs', read=_read)
  assert links == ['missing.md: no file docs/missing.md',
                   '#not-a-heading: no heading or anchor #not-a-heading',
                   '../README.md#nope: no heading or anchor #nope',
                   '../figures/nope.png: no file figures/nope.png',
                   '../figures/nope2.png: no file figures/nope2.png']
  problems = bad_commands(BROKEN)
  assert problems[-1].startswith(f'python -m experiments.plots: {FAILED} ImportError'), problems
  assert problems[:-1] == [
      'python -m experiments.ccmc_example --no_such_flag: not a flag of the module',
      'python -m experiments.no_such_module: no such module',
      'python -m ccmc_jax.compare --no_such_option: not a flag of the module',
      'python -m experiments.claims --bogus: not a flag of the module',
      'python -m benchmarks.memory --K: not a flag of the module']


def test_github_anchor_slugs():
  assert slug('Comparing results: does my rerun agree with the reference?') == (
      'comparing-results-does-my-rerun-agree-with-the-reference')
  assert slug('Vocabulary scale: `fit_mle` at K = 1000 and beyond') == (
      'vocabulary-scale-fit_mle-at-k--1000-and-beyond')
  assert slug('What "agree" means') == 'what-agree-means'
  assert slug('Figs. 4 and 6: sample complexity, K²/n') == 'figs-4-and-6-sample-complexity-k²n'
  assert anchors('# A\n## A\n```\n# not a heading\n```\n<a id="x"></a>') == {'a', 'a-1', 'x'}
