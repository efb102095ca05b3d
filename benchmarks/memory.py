"""Memory estimates vs the measured peak: each experiment at a few small-to-medium settings.

  python -m benchmarks.memory                    # every setting below (~15 min on 2 cores)
  python -m benchmarks.memory collapse sample_complexity   # only these experiments

Each setting runs in a fresh process (``python -m experiments.<name> ... --results_dir=tmp``);
its peak resident memory is the child's ``ru_maxrss`` (``os.wait4``). The estimate is
``ccmc_jax.memory.peak`` of the terms the script's ``validate()`` checks. An estimate may err
high (ratio above 1: the check refuses a little early), never low; the table in docs/performance.md was
made with this script. Keep the settings within a few GB: the machine is shared.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from ccmc_jax import memory

GB = 1e9
# (experiment, flags, estimate terms)
SETTINGS = [
    ('collapse', dict(K=6, T=10, seeds=2), memory.collapse(6, 10, 2)),
    ('collapse', dict(K=500, T=2, seeds=200), memory.collapse(500, 2, 200)),
    ('collapse', dict(K=1000, T=2, seeds=200), memory.collapse(1000, 2, 200)),
    ('collapse', dict(K=6, T=200000, seeds=2), memory.collapse(6, 200000, 2)),
    ('collapse', dict(K=6, T=500, seeds=20, window=10 ** 6),
     memory.collapse(6, 500, 20, window=10 ** 6)),
    ('collapse', dict(K=30, T=500, seeds=20, window=200000),
     memory.collapse(30, 500, 20, window=200000)),
    ('sample_complexity', dict(K=200, n=1000, trials=1, mc_samples=1000),
     memory.sample_complexity(200, 10, 1000, 1, 1000)),
    ('sample_complexity', dict(K=300, n=1000, trials=1, mc_samples=1000),
     memory.sample_complexity(300, 10, 1000, 1, 1000)),
    ('sample_complexity', dict(K=5, n=1000000, trials=4, mc_samples=1000),
     memory.sample_complexity(5, 10, 1000000, 4, 1000)),
    ('sample_complexity', dict(K=20, n=100000, trials=20),
     memory.sample_complexity(20, 10, 100000, 20, 50000)),
    ('self_vs_cross', dict(K=100, n=1000, trials=2),
     memory.self_vs_cross(100, 6, 1000, 2)),
    ('self_vs_cross', dict(K=6, n=1000000, trials=4),
     memory.self_vs_cross(6, 6, 1000000, 4)),
    ('attention_equivalence', dict(K=50, L=500, attention='self', trials=50, prompts=100,
                                   scatter_trials=5),
     memory.attention_equivalence(50, 500, 50, 100)),
    ('positional_encoding', dict(n=1000000, trials=8, eq_K=3, eq_L=3),
     memory.positional_encoding(5, 8, 1000000, 8, 3, 3, 100, 20, 4)),
    ('trajectory_learning', dict(K=20, T=30000, trials=4),
     memory.trajectory_learning(20, 10, 30000, 4)),
    ('collapse_statistics', dict(K=64, L0=8, scale=1, T=30000, seeds=50, batch=50),
     memory.collapse_statistics(64, 30000, 50, 50, (('K', 64), ('K', 64)))),
    ('collapse_statistics', dict(K=8, L0=100000, K_base=200, scale=1, T=10, seeds=16),
     memory.collapse_statistics(200, 10, 50, 16, (('L0', 100000), ('K_base', 200)))),
    ('vocabulary_scaling', dict(K=256, n_over_K2=30, trials=4, min_trials=4),
     memory.vocabulary_scaling(256, 10, 30 * 256 ** 2, 4)),
]


def measure(experiment, flags):
  """Peak RSS (bytes) and exit status of one run in a fresh process."""
  with tempfile.TemporaryDirectory() as tmp:
    args = [f'--{k}={v}' for k, v in flags.items()]
    cmd = [sys.executable, '-m', f'experiments.{experiment}', *args,
           f'--results_dir={tmp}', f'--figures_dir={tmp}']
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    return usage.ru_maxrss * 1024, proc.returncode  # ru_maxrss is in KiB on Linux


def main(only):
  print('| experiment | flags | estimate (GB) | measured peak (GB) | estimate / peak |')
  print('|---|---|---|---|---|')
  for experiment, flags, terms in SETTINGS:
    if only and experiment not in only:
      continue
    peak, rc = measure(experiment, flags)
    estimate = memory.peak(terms)
    flag_text = ' '.join(f'--{k}={v}' for k, v in flags.items())
    status = '' if rc == 0 else f' (exit {rc})'
    print(f'| {experiment} | `{flag_text}` | {estimate / GB:.2f} | {peak / GB:.2f}{status} | '
          f'{estimate / peak:.2f} |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
