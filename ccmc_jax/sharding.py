"""Sweeps over several devices: the trial axis of a ``jit(vmap(run_trial))`` sharded over a 1-D
device mesh with ``jax.sharding``.

A sweep's trials are independent, so its leading (trial) axis splits over devices with no
communication. :func:`map_chunks` (what the sample-complexity sweep uses) runs fixed-size chunks
of trials with one compiled chunk program, ``lax.map`` over each device's chunks inside
``shard_map``: a trial's numbers then do not depend on the device count at all (XLA's CPU
backend picks kernels by shape, so a program over ``trials / devices`` trials can differ in
the last bits from one over all of them). :func:`run_sharded` pads that axis to a multiple of the device count (repeating
the last trial, so a batch-wide bound such as a loop trip count is unchanged; at least
:data:`MIN_PER_DEVICE` trials per device), places the inputs with
``NamedSharding(mesh, PartitionSpec('trials'))``, calls the jitted function (XLA partitions it
following its inputs: the program keeps its global, all-trials meaning) and drops the padding
from every output. On one device (two trials or more) it calls the function unchanged, so
single-device results are exactly those of the plain ``jit(vmap(...))``; with more devices
each device runs it on its share of the trials (``tests/test_sharding.py`` checks both
helpers on CPU with forced host devices).

Several hosts: call ``jax.distributed.initialize()`` first in every process; each process then
runs only its :func:`process_slice` of the trials on its own local devices (the mesh here is
always over ``jax.local_devices()``), writes its own results, and the per-process CSVs are
concatenated afterwards. Trial ``i`` always draws from ``fold_in(key, i)`` with its global
index ``i``, so the concatenation equals the single-process sweep.

Check on a CPU-only machine with, e.g., ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(call :func:`ensure_cpu_threads` before JAX starts; the experiments do).
"""
from __future__ import annotations

import functools
import os
import re
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

AXIS = 'trials'
# Trials (run_sharded) or chunks (map_chunks) per device at least: XLA drops a batch dimension
# of size 1 and may then pick other kernels, whose float results differ in the last bits (seen
# on CPU in the Newton fits); likewise it inlines a loop of one trip into its caller (chunks:
# kept out by construction, not measured).
MIN_PER_DEVICE = 2


def ensure_cpu_threads(environ=None) -> int | None:
  """With ``N > 1`` forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``)
  give XLA's CPU thread pool at least ``2N`` threads (env ``PJRT_NPROC``, read when the CPU
  client starts: call this before the first JAX computation). Returns the size set, or None.

  Why: jaxlib 0.10.2's batched LAPACK kernels (solve, Cholesky, eigh) split their batch over
  that pool and block a pool thread until the pieces finish; with one program per forced device
  running at once on a pool sized by the CPU count (2 here), every thread can end up waiting
  and the sweep hangs. More threads than concurrent waiters avoids it; the numbers do not
  change (``tests/test_sharding.py``). A ``PJRT_NPROC`` or ``NPROC`` already set is kept.
  """
  environ = os.environ if environ is None else environ
  found = re.findall(r'--xla_force_host_platform_device_count=(\d+)', environ.get('XLA_FLAGS', ''))
  devices = int(found[-1]) if found else 1
  if devices <= 1 or environ.get('PJRT_NPROC') or environ.get('NPROC'):
    return None
  threads = max(os.cpu_count() or 1, 2 * devices)
  environ['PJRT_NPROC'] = str(threads)
  return threads


def trial_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named ``'trials'`` over ``devices`` (default: every local device)."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.array(devices), (AXIS,))


def padded_size(trials: int, devices: int) -> int:
  """``trials`` rounded up to a multiple of ``devices``, at least ``MIN_PER_DEVICE`` each."""
  return devices * max(-(-trials // devices), MIN_PER_DEVICE)


def pad_trials(tree, size: int):
  """Every leaf's leading axis padded to ``size`` by repeating its last entry."""
  def pad(x):
    extra = size - x.shape[0]
    if extra < 0:
      raise ValueError(f'cannot pad {x.shape[0]} trials to {size}')
    if extra == 0:
      return x
    return jax.numpy.concatenate([x, jax.numpy.repeat(x[-1:], extra, axis=0)], axis=0)
  return jax.tree.map(pad, tree)


def shard_trials(tree, mesh: Mesh):
  """Pad every leaf's leading axis to :func:`padded_size` and place it sharded along
  ``'trials'``. Returns (the sharded tree, the number of real trials)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError('shard_trials needs at least one array')
  trials = int(leaves[0].shape[0])
  if any(int(x.shape[0]) != trials for x in leaves):
    raise ValueError('every batched argument needs the same leading (trial) axis')
  padded = pad_trials(tree, padded_size(trials, mesh.size))
  return jax.device_put(padded, NamedSharding(mesh, PartitionSpec(AXIS))), trials


def unpad(tree, trials: int):
  """Drop the padding: the first ``trials`` entries of every leaf's leading axis."""
  return jax.tree.map(lambda x: x[:trials], tree)


def run_sharded(fn: Callable, batched, *rest, mesh: Mesh | None = None):
  """``fn(*batched, *rest)`` with the leading axis of every leaf of ``batched`` (a tuple of
  arrays or pytrees, all with the same number of trials) sharded over the devices of ``mesh``
  (default: all local devices); ``rest`` is passed as is (replicated). Every output leaf must
  have the trial axis first; the padding is dropped from it.

  ``fn`` is normally jitted; it must treat trials independently except through batch-wide
  reductions that repeated trials do not change (max, any).
  """
  mesh = trial_mesh() if mesh is None else mesh
  trials = int(jax.tree.leaves(batched)[0].shape[0])
  if mesh.size == 1 and trials >= MIN_PER_DEVICE:
    return fn(*batched, *rest)  # exactly the unsharded call
  placed, trials = shard_trials(tuple(batched), mesh)
  return unpad(fn(*placed, *rest), trials)


def vmap_trials(run_trial: Callable, mesh: Mesh | None = None) -> Callable:
  """``jit(vmap(run_trial))`` over a batch of per-trial inputs (e.g. keys), trial axis
  sharded over ``mesh`` (default: all local devices). Returns ``f(*batched) -> outputs``."""
  batched_fn = jax.jit(jax.vmap(run_trial))
  return lambda *batched: run_sharded(batched_fn, batched, mesh=mesh)


def chunked_size(trials: int, devices: int, chunk: int) -> int:
  """``trials`` rounded up to a multiple of ``devices * chunk``, at least
  ``MIN_PER_DEVICE`` chunks per device (a loop of one trip would be inlined by XLA)."""
  return devices * chunk * max(-(-trials // (devices * chunk)), MIN_PER_DEVICE)


@functools.lru_cache(maxsize=None)
def _chunk_program(fn: Callable, chunk: int, mesh: Mesh, batched: int, rest: int):
  """jit(shard_map(lax.map over chunks of ``chunk`` trials of ``fn``)) (see :func:`map_chunks`)."""
  def local(*args):  # this device's block of trials: (chunks * chunk, ...) per leaf
    stack = lambda x: x.reshape(-1, chunk, *x.shape[1:])
    out = jax.lax.map(lambda b: fn(*b, *args[batched:]), jax.tree.map(stack, args[:batched]))
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)

  specs = (PartitionSpec(AXIS),) * batched + (PartitionSpec(),) * rest
  # check_vma=False: no collectives inside, and library loops (e.g. fit.damped_newton) start
  # from constants that the per-device check would ask to mark as varying.
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(AXIS),
                               check_vma=False))


def map_chunks(fn: Callable, batched, *rest, chunk: int, mesh: Mesh | None = None):
  """``fn`` over fixed-size chunks of ``chunk`` trials, the chunks split over the devices of
  ``mesh`` (default: all local devices): the same numbers on any number of devices.

  ``fn(*chunk_of_batched, *rest)`` takes ``chunk`` trials along the leading axis of every
  leaf of ``batched`` (a tuple of arrays or pytrees) and returns outputs with that trial
  axis first; ``rest`` is passed as is (replicated). The trial axis is padded (repeating the
  last trial) to :func:`chunked_size`, each device runs ``lax.map`` over its chunks with one
  compiled chunk program, and the padding is dropped.

  Why not :func:`run_sharded` on a ``jit(vmap(...))``: there every device runs the program on
  ``trials / devices`` trials, and XLA's CPU backend picks kernels by shape (its YNNPACK
  reduce fusion takes some batched reductions only at the larger batch), so the last float
  bits of a trial depended on the device count. Here a trial's numbers come from one program
  of fixed shape whatever the device count. ``fn`` must be hashable and stable (a module-level
  function or a cached closure): the compiled program is cached per ``(fn, chunk, mesh)``.
  """
  mesh = trial_mesh() if mesh is None else mesh
  leaves = jax.tree.leaves(batched)
  trials = int(leaves[0].shape[0])
  if any(int(x.shape[0]) != trials for x in leaves):
    raise ValueError('every batched argument needs the same leading (trial) axis')
  padded = pad_trials(tuple(batched), chunked_size(trials, mesh.size, chunk))
  placed = jax.device_put(padded, NamedSharding(mesh, PartitionSpec(AXIS)))
  rest = jax.device_put(rest, NamedSharding(mesh, PartitionSpec()))
  program = _chunk_program(fn, chunk, mesh, len(batched), len(rest))
  return unpad(program(*placed, *rest), trials)


def process_slice(trials: int, process_index: int | None = None,
                  process_count: int | None = None) -> range:
  """The trial indices that this process runs in a multi-host sweep: a contiguous block of
  ``range(trials)``, the blocks of processes ``0..count-1`` in order covering it exactly once.

  Defaults come from ``jax.process_index()`` / ``jax.process_count()`` (after
  ``jax.distributed.initialize()``; one process without it).
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f'process_index={index} is outside [0, {count})')
  base, extra = divmod(trials, count)
  start = index * base + min(index, extra)
  return range(start, start + base + (index < extra))
