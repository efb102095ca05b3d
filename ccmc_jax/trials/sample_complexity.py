"""Sample complexity of learning the CCMC from n IID prompts (paper Sec. 3, Figs. 4 and 6).

A trial of a setting (K, L): draw ``A* ~ N(0, scale^2)``, ``n_max`` IID prompts with answers
``y ~ pi^X(A*)`` and a Monte-Carlo prompt set; fit the convex MLE on the first ``n`` samples for
every ``n`` of the grid and record ``||P_hat - P*||_F^2`` (``error``), the row-centred score
error (``error_W``), the Newton iterations, and the asymptotic prediction
``(1/n) sum_k tr(J_k F_k^+ J_k)`` from the Monte-Carlo Fisher information (``predicted_error``;
``docs/theory.md``, the Fisher-information overlay).

Two equal ways to run the trials of a setting:

* :func:`run_setting` — what the experiment runs: jitted stages over the trial axis (data
  generation once per setting, samples grouped by query once, one fit per ``n``). Its ``keys``
  argument is the trial-vmap boundary: every stage maps over axis 0 of ``keys``, so sharding
  ``keys`` across devices shards the whole setting.
* :func:`make_run_trial` — one trial from its key, written plainly from the same library calls;
  the reference the tests compare :func:`run_setting` with (``vmap(run_trial)`` == a loop).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import fit
from ccmc_jax import sampling
from ccmc_jax import sharding
from ccmc_jax import theory
from ccmc_jax.trials import common

CAPACITY_MULTIPLE = 1024  # per-row capacities are rounded up to this: few distinct shapes
TRIAL_CHUNK = 4  # trials per compiled fit program; never depends on the device count


class Setting(NamedTuple):
  """One (K, L) setting of the sweep and everything its trials depend on."""
  K: int
  L: int
  ns: Tuple[int, ...]       # the sample sizes n of the grid (increasing)
  mc_samples: int = 50000   # Monte-Carlo prompts per trial for the Fisher information
  scale: float = 1.0        # A* ~ N(0, scale^2)
  cross: bool = False       # cross-attention: the query is not a key
  prompts: str = 'uniform'  # prompt distribution (sampling.PROMPTS)
  ridge: float = 1e-6       # (ridge/2)||A||^2 on the NLL


def keys(seed, setting: Setting, trials):
  """Trial keys of a setting: ``trial_keys(seed, K, L)`` (see ``ccmc_jax.trials.common``)."""
  return common.trial_keys(seed, setting.K, setting.L, trials=trials)


def _split(key, setting, n_max):
  w_key, data_key, mc_key = jax.random.split(key, 3)
  return (w_key, sampling.dataset_uniforms(data_key, n_max, setting.L),
          sampling.dataset_uniforms(mc_key, setting.mc_samples, setting.L))


def _datasets(uniforms, setting):
  w_key, data_u, mc_u = uniforms
  prompt_fn = sampling.PROMPTS[setting.prompts](setting.K, setting.L)
  A = sampling.sample_scores(w_key, setting.K, setting.scale)
  return (A, sampling.dataset_from_uniforms(A, *data_u, prompt_fn, setting.cross),
          sampling.dataset_from_uniforms(A, *mc_u, prompt_fn, setting.cross))


@functools.lru_cache(maxsize=None)
def _uniform_stage(L, n_max, mc_samples):
  """jit(lax.map over trials) of every trial's randomness. Independent of K: one compilation
  serves the whole K sweep. lax.map, not vmap: each trial is already vectorised over samples,
  and vmapping threefry over keys makes XLA compile ~5x longer on CPU for no run-time gain."""
  setting = Setting(0, L, (), mc_samples)

  def uniform_trials(keys):  # pylint: disable=redefined-outer-name
    return jax.lax.map(lambda key: _split(key, setting, n_max), keys)

  return jax.jit(uniform_trials)


@functools.lru_cache(maxsize=None)
def _dataset_stage(K, L, scale, cross, prompts):
  """jit(lax.map over trials) of ``A*``, data and Monte-Carlo sets from the uniforms."""
  setting = Setting(K, L, (), 0, scale, cross, prompts)

  def sample_trials(uniforms):
    return jax.lax.map(lambda u: _datasets(u, setting), uniforms)

  return jax.jit(sample_trials)


def generate(setting: Setting, keys):  # pylint: disable=redefined-outer-name
  """(A*, data, mc) of every trial, stacked over the trials of ``keys`` (trials, 2): the same
  numbers as ``sampling.sample_dataset`` per trial. Dispatched asynchronously."""
  uniforms = _uniform_stage(setting.L, max(setting.ns), setting.mc_samples)(keys)
  return _dataset_stage(setting.K, setting.L, setting.scale, setting.cross,
                        setting.prompts)(uniforms)


@functools.lru_cache(maxsize=None)
def _group_stage(K, capacity):
  """jit(vmap over trials) of sorting each trial's samples by query, once for every n."""
  def group_trials(data):
    return fit.group_by_query(data, K, capacity)

  return jax.jit(jax.vmap(group_trials))


def _fit(grouped, A, n, ridge, slots):
  res = fit.fit_grouped(fit.restrict(grouped, n), ridge=ridge, slots=slots)
  return fit.p_error(res.A_hat, A), fit.centered_w_error(res.A_hat, A), res.iters


@functools.lru_cache(maxsize=None)
def _fit_chunk(ridge):
  """vmap over a chunk of ``TRIAL_CHUNK`` trials of fit + errors at a traced n (run by
  ``sharding.map_chunks``: one compilation per (K, capacity), any device count)."""
  trials = jax.vmap(_fit, in_axes=(0, 0, None, None, None))

  def fit_chunk(grouped, A, n):
    # One chunk-loop trip count for the chunk's trials (extra slots weigh exactly 0).
    return trials(grouped, A, n, ridge, fit.used_slots(grouped, n))

  return fit_chunk


@functools.lru_cache(maxsize=None)
def _theory_chunk(K, capacity):
  """vmap over a chunk of trials of the predicted error at n = 1 (Fisher information summed
  over fixed chunks of prompts: the same numbers whatever the CPU thread count)."""
  return jax.vmap(lambda A, mc: theory.predicted_error(A, mc, K, capacity, 1.0, chunked=True))


def capacity(query, K):
  """Host-side per-row capacity of a (stack of) query arrays, rounded up."""
  return fit.round_capacity(fit.row_capacity(query, K), CAPACITY_MULTIPLE)


def run_setting(setting: Setting, keys, ns=None, generated=None):  # pylint: disable=redefined-outer-name
  """Every trial of one setting at each ``n`` of ``ns`` (default ``setting.ns``).

  Args:
    setting: the (K, L) setting.
    keys: (trials, 2) trial keys — the trial-vmap boundary (see the module doc).
    ns: the sample sizes to fit (a subset of ``setting.ns``, e.g. those not yet done).
    generated: ``generate(setting, keys)`` when already dispatched (look-ahead).
  Yields:
    (n, dict of (trials,) arrays: error, error_W, predicted_error, newton_iters), per n.
  """
  K = setting.K
  A, data, mc = generate(setting, keys) if generated is None else generated
  # The predicted error at n = 1 and the fits run in fixed chunks of TRIAL_CHUNK trials, the
  # chunks split over all local devices (ccmc_jax.sharding.map_chunks): the same numbers on
  # any number of devices.
  unit_error = sharding.map_chunks(_theory_chunk(K, capacity(mc.query, K)), (A, mc),
                                   chunk=TRIAL_CHUNK)
  grouped, dropped = _group_stage(K, capacity(data.query, K))(data)
  del data, mc
  assert not np.asarray(dropped).any(), 'row capacity too small'  # by construction
  unit_error = np.asarray(unit_error)
  for n in setting.ns if ns is None else ns:
    err, err_w, iters = map(np.asarray, sharding.map_chunks(
        _fit_chunk(setting.ridge), (grouped, A), n, chunk=TRIAL_CHUNK))
    yield n, {'error': err, 'error_W': err_w, 'predicted_error': unit_error / n,
              'newton_iters': iters}


def sweep(settings, seed, trials, todo, select=None):
  """:func:`run_setting` over several settings, each setting's ``n`` in ``todo[setting]``
  (settings with none are skipped), with one setting of look-ahead: the next setting's data
  are generated (JAX dispatch is asynchronous) while this one is grouped and fitted.

  ``select``: a contiguous ``range`` of the trials to run (e.g. this process's
  ``sharding.process_slice``; default all). Trial ``i`` keeps its key and its numbers: a
  trial's results do not depend on the other trials run with it.

  Yields:
    (setting, n, dict of (len(select),) arrays), as :func:`run_setting`.
  """
  select = range(trials) if select is None else select
  pending = [s for s in settings if todo[s]]
  dispatch = lambda s: generate(s, keys(seed, s, trials)[select.start:select.stop])
  upcoming = dispatch(pending[0]) if pending else None
  for i, setting in enumerate(pending):
    current = upcoming
    upcoming = dispatch(pending[i + 1]) if i + 1 < len(pending) else None
    for n, columns in run_setting(setting, None, todo[setting], generated=current):
      yield setting, n, columns


def make_run_trial(setting: Setting, data_capacity, mc_capacity):
  """One trial as a plain function of its key (no stages, no batch): ``run_trial(key) ->``
  dict of (len(ns),) arrays error, error_W, predicted_error, newton_iters. The capacities are
  static (e.g. those :func:`run_setting` computes, or ``max(ns)`` and ``mc_samples``)."""
  K, n_max = setting.K, max(setting.ns)

  def run_trial(key):
    A, data, mc = _datasets(_split(key, setting, n_max), setting)
    unit_error = theory.predicted_error(A, mc, K, mc_capacity, 1.0, chunked=True)
    grouped, _ = fit.group_by_query(data, K, data_capacity)
    out = [_fit(grouped, A, n, setting.ridge, None) for n in setting.ns]
    err, err_w, iters = (jnp.stack(v) for v in zip(*out))
    return {'error': err, 'error_W': err_w,
            'predicted_error': unit_error / jnp.asarray(setting.ns, jnp.float32),
            'newton_iters': iters}

  return run_trial


def slopes(frame):
  """{(K, L): slope of log(mean error) against log(n)} (paper Fig. 4: about -1)."""
  return common.mean_slopes(frame, ['K', 'L'])


def summary(frame):
  """The sidecar's summary: the slopes keyed 'K=..,L=..'."""
  return {'slopes': {f'K={k},L={l}': s for (k, l), s in slopes(frame).items()}}
