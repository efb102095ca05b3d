"""No recompilation per trial or per n: each jitted sweep cell compiles once per shape (K).

Counted from JAX's own compile log (JAX_LOG_COMPILES=1) of real experiment runs, with the
persistent compilation cache off so that every compilation is logged. (The sample-complexity
stages are counted in process: tests/test_trials.py.)
"""
import re

import pytest

from conftest import run_module


def compilations(stderr):
  """{function name: number of XLA compilations} from a JAX_LOG_COMPILES=1 log."""
  counts = {}
  for name in re.findall(r'Finished XLA compilation of jit\(([^)]*)\)', stderr):
    counts[name] = counts.get(name, 0) + 1
  return counts


@pytest.mark.parametrize('module, args, expected', [
    # 2 variants x (the traced trajectory, the 10-seed sweep): 4, none per seed.
    ('experiments.collapse', ['--T=300', '--seeds=10'], {'run_trial': 4}),
])
def test_one_compilation_per_shape(tmp_path, module, args, expected):
  r = run_module(module, *args, tmp=tmp_path, env={'JAX_LOG_COMPILES': '1', 'CCMC_JAX_CACHE': ''})
  assert r.returncode == 0, r.stderr[-2000:]
  counts = compilations(r.stderr)
  assert {k: counts.get(k, 0) for k in expected} == expected, counts
