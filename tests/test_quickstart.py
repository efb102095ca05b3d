"""The README's library quick start runs as written (it cannot go stale): the code block after
"**Quick start**" is extracted from README.md and executed in process."""
import contextlib
import io
import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_code():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  match = re.search(r'\*\*Quick start\*\*.*?```python\n(.*?)```', readme, re.S)
  assert match, 'README.md has no "**Quick start**" python block'
  return match.group(1)


def test_readme_quickstart_runs_and_its_numbers_make_sense():
  code = quickstart_code()
  assert len(code.strip().splitlines()) <= 20  # a quick start, not a tutorial
  out = io.StringIO()
  ns = {}
  with contextlib.redirect_stdout(out):
    exec(compile(code, 'README.md:quick-start', 'exec'), ns)  # pylint: disable=exec-used
  K, n = ns['K'], ns['n']
  err = float(re.search(r'\|\|P_hat - P\|\|_F\^2 = (\S+)', out.getvalue()).group(1))
  # The asymptotic error is ~K^2/n (docs/theory.md Sec. 4); a wrong fit is off by orders.
  assert 0.1 * K ** 2 / n < err < 5 * K ** 2 / n, err
  assert int(ns['res'].dropped) == 0
  freqs = np.asarray(ns['traj'].freqs)
  assert freqs.shape == (2000, K)
  np.testing.assert_allclose(freqs.sum(1), 1, rtol=1e-5)
  # Growing context: a token absent from the prompt never appears (docs/theory.md Sec. 7).
  absent = np.setdiff1d(np.arange(K), np.asarray(ns['X']))
  assert np.all(freqs[:, absent] == 0)
