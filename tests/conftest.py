"""Shared test helpers: run an experiment script as a user does (a subprocess)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, tmp, env=None, **kw):
  """``python -m module --results_dir=tmp/results --figures_dir=tmp/figures *args``."""
  cmd = [sys.executable, '-m', module, f'--results_dir={tmp}/results',
         f'--figures_dir={tmp}/figures', *args]
  full_env = dict(os.environ, JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True,
                        timeout=300, **kw)
