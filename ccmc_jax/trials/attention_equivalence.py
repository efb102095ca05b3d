"""Attention is a CCMC (paper Fig. 2, Lemma 2.2): a numerical check on random weights.

A cell (K, L, attention) draws ``trials`` weight matrices W ~ N(0, scale^2) (K x K, E = I), each
with ``prompts`` uniform prompts X, and compares ``model.attention_next_token_probs(W, X)`` with
``model.ccmc_next_token_probs(model.transition_matrix(W), X)`` on all K probabilities.

The randomness of a trial is drawn at the sweep's largest shape (``K_max``, ``L_max``) and a cell
takes the leading blocks, so one compiled sampler serves the whole sweep (threefry is slow to
compile on CPU). :func:`run_cell` (what the experiment runs: a jit(lax.map) sampler, then
jit(vmap over trials) of the comparison) equals ``vmap(make_run_trial(...))``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import model
from ccmc_jax import sampling
from ccmc_jax.trials import ccmc_example
from ccmc_jax.trials import common

COLUMNS = ('max_abs_diff', 'mean_abs_diff', 'max_sum_error', 'attention', 'ccmc')


class Cell(NamedTuple):
  K: int
  L: int
  cross: bool


class Sweep(NamedTuple):
  """Shapes and scale shared by every cell: the draws are made at (K_max, L_max)."""
  K_max: int
  L_max: int    # at least the largest L + 1 (the uniform prompt reads L + 1 uniforms)
  prompts: int  # uniform prompts X per draw of W
  scale: float = 1.0


def cells(Ks, Ls, attentions):
  """The (K, L, cross) cells; cross-attention with L = 1 has no keys: skipped."""
  out = []
  for attention in dict.fromkeys(attentions):
    cross = attention == 'cross'
    out += [Cell(int(K), int(L), cross) for K in dict.fromkeys(Ks) for L in dict.fromkeys(Ls)
            if not (cross and int(L) < 2)]
  return out


def keys(seed, cell: Cell, trials):
  """Trial keys of a cell: ``trial_keys(seed, K, L, int(cross))`` (ccmc_jax.trials.common)."""
  return common.trial_keys(seed, cell.K, cell.L, int(cell.cross), trials=trials)


def _draw(key, sweep: Sweep):
  w_key, x_key = jax.random.split(key)
  return (jax.random.normal(w_key, (sweep.K_max, sweep.K_max)),
          jax.random.uniform(x_key, (sweep.prompts, sweep.L_max)))


def _compare(normals, u, cell: Cell, scale):
  """Both routes on every prompt of one draw: max/mean |difference|, the worst deviation of a
  row sum from 1, and the first prompt's two probability vectors (the scatter panel)."""
  K, L, cross = cell
  W = scale * normals[:K, :K]  # W ~ N(0, scale^2), E = I
  X = sampling.uniform_prompt(K, L)(u[:, :L + 1])  # uniform prompts (reads L uniforms)
  att = model.attention_next_token_probs(W, X, cross=cross)
  ccmc = model.ccmc_next_token_probs(model.transition_matrix(W), X, cross=cross)
  diff = jnp.abs(att - ccmc)
  sum_error = jnp.maximum(jnp.abs(att.sum(-1) - 1), jnp.abs(ccmc.sum(-1) - 1)).max()
  return dict(zip(COLUMNS, (common.finite_max(diff), diff.mean(), sum_error, att[0], ccmc[0])))


@functools.lru_cache(maxsize=None)
def _sampler(sweep: Sweep):
  return jax.jit(lambda k: jax.lax.map(lambda key: _draw(key, sweep), k))


@functools.lru_cache(maxsize=None)
def _cell_stage(cell: Cell, scale):
  return jax.jit(jax.vmap(lambda normals, u: _compare(normals, u, cell, scale)))


def run_cell(cell: Cell, sweep: Sweep, keys):  # pylint: disable=redefined-outer-name
  """Every trial of a cell: dict of arrays over the trials of ``keys`` (COLUMNS; attention and
  ccmc are (trials, K): the first prompt of each draw)."""
  return _cell_stage(cell, sweep.scale)(*_sampler(sweep)(keys))


def make_run_trial(cell: Cell, sweep: Sweep):
  """One trial from its key, unbatched: ``run_trial(key) -> dict`` as one row of run_cell."""
  return lambda key: _compare(*_draw(key, sweep), cell, sweep.scale)


def summary(frame):
  """(max abs difference, pairs compared, per-cell frame with max_abs_diff and pairs); a NaN
  anywhere makes the maxima NaN (never skipped)."""
  per_cell = frame.groupby(['K', 'L', 'cross']).agg(
      max_abs_diff=('max_abs_diff', common.nan_max), pairs=('prompts', 'sum')).reset_index()
  return common.nan_max(frame['max_abs_diff']), int(frame['prompts'].sum()), per_cell


def failure(frame, example_frame, tol):
  """None when every cell's max |attention - CCMC| and the worked example's (``example_frame``:
  long format, ``trials.ccmc_example.to_columns``) are within ``tol``; else a one-line message
  naming the worst cell or the example (NaN fails)."""
  worst, _, per_cell = summary(frame)
  if not common.within(worst, tol):
    values = per_cell['max_abs_diff'].to_numpy()
    row = per_cell.iloc[int(np.argmax(np.where(np.isnan(values), np.inf, values)))]
    return (f'max |attention - CCMC| = {worst:.3g} > tol {tol:g} (or NaN); worst cell '
            f'K={int(row.K)} L={int(row.L)} {"cross" if row.cross else "self"}')
  q = ccmc_example.from_columns(*(example_frame[c].to_numpy()
                                  for c in ccmc_example.KEYS + ['value']))
  diff = common.nan_max(np.abs(q['att_output'] - q['pi']))
  if not common.within(diff, tol):
    return f'worked example: max |attention - CCMC| = {diff:.3g} > tol {tol:g} (or NaN)'
  return None
