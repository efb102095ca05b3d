"""Distribution collapse along one trajectory (paper Sec. 4, Fig. 5 middle and right).

Trial ``i`` (seed sweep index ``i``) uses ``key = fold_in(PRNGKey(seed), i)``
(``trials.common.trial_keys(seed, trials=n)``), split into (scores, prompt, trajectory) keys:
  A ~ N(0, scale^2) (``sampling.sample_scores``), or the user's scores;
  P = softmax(A), or with ``zero_diag`` the same chain without self-loops
  (``trials.common.chain_log_P``; the variants share A);
  X0 = a random permutation of all K tokens unless given;
  T tokens x_{t+1} ~ pi^{X_t} (``trajectory.generate``, growing or windowed context).

The plotted example of a variant is the sweep's trajectory whose final top-1 share is the
sweep's (lower) median (:func:`median_seed`), so the example is representative of the sweep.
"""
from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import sampling
from ccmc_jax import trajectory
from ccmc_jax.trials import common

VARIANTS = ('random', 'zero_diag')
EXAMPLE_RULE = ('the seed whose final top-1 share (random P; else the first variant) is the '
                'lower median of the seed sweep; every variant uses that seed (same A)')


def make_run_trial(K, T, scale=1.0, zero_diag=False, window=None, X0=None, A=None,
                   trace=False, threshold=0.1):
  """``run_trial(key) -> dict`` for one trajectory of the collapse experiment.

  Args:
    K: vocabulary size; T: tokens generated.
    scale: scores A ~ N(0, scale^2) when ``A`` is None.
    zero_diag: drop the self-loops of P (may be traced).
    window: None (growing context) or a context window L.
    X0: a fixed initial prompt (tuple of tokens); None draws a permutation of [K] per trial.
    A: fixed (K, K) scores (e.g. log P of a user's P) instead of random ones.
    trace: True returns the whole trajectory, False its final shares.
    threshold: winner threshold (final frequency above it), for ``trace=False``.
  Returns:
    ``run_trial(key)``: with ``trace``, ``{'tokens': (T,), 'freqs': (T, K)}``; otherwise
    ``{'top1', 'top2', 'winners'}`` (largest / two largest final frequencies, number of
    tokens above ``threshold``); both with ``impossible``, the number of steps that emitted a
    token of probability 0 from its query (``P[x_L, y] = 0``). It must be 0: it is not when a
    context holds only tokens the query cannot reach (``pi^X`` = 0/0, e.g. a zero-diagonal
    chain whose context is the query token alone), where the sampler's fallback
    (``model.ccmc_log_probs``) would otherwise pass unnoticed.
  """
  def run_trial(key):
    w_key, x_key, t_key = jax.random.split(key, 3)
    scores = sampling.sample_scores(w_key, K, scale) if A is None else jnp.asarray(A)
    log_P = common.chain_log_P(scores, zero_diag)
    prompt = (jnp.asarray(X0, jnp.int32) if X0 else
              jax.random.permutation(x_key, K).astype(jnp.int32))
    traj = trajectory.generate(t_key, log_P, prompt, T, window=window, trace=trace)
    queries = jnp.concatenate([prompt[-1:], traj.tokens[:-1]])
    impossible = (~(log_P[queries, traj.tokens] > -jnp.inf)).sum()  # -inf or NaN
    if trace:
      return {'tokens': traj.tokens, 'freqs': traj.freqs, 'impossible': impossible}
    final = -jnp.sort(-traj.freqs[0])
    return {'top1': final[0], 'top2': final[0] + final[1], 'winners': (final > threshold).sum(),
            'impossible': impossible}

  return run_trial


@functools.lru_cache(maxsize=None)
def _sweep_fn(K, T, scale, zero_diag, window, X0, threshold):
  return jax.jit(jax.vmap(make_run_trial(K, T, scale, zero_diag, window, X0,
                                         threshold=threshold)))


def seed_sweep(seed, seeds, K, T, scale=1.0, zero_diag=False, window=None, X0=None,
               threshold=0.1):
  """Final shares of ``seeds`` trajectories (jit(vmap(run_trial))): dict of (seeds,) arrays
  ``seed`` (the trial index), ``top1``, ``top2``, ``winners``.

  Raises:
    ZeroMassError: a trajectory emitted a token of probability 0 (:func:`make_run_trial`).
  """
  X0 = tuple(int(x) for x in X0) if X0 else None
  out = _sweep_fn(K, T, float(scale), bool(zero_diag), window, X0, float(threshold))(
      common.trial_keys(seed, trials=seeds))
  out = {k: np.asarray(v) for k, v in out.items()}
  _check_possible(out.pop('impossible'))
  return {'seed': np.arange(seeds), **out}


class ZeroMassError(ValueError):
  """A context whose tokens all have probability 0 from the query: ``pi^X`` is 0/0."""


def _check_possible(impossible):
  if np.any(impossible):
    raise ZeroMassError(f'a context held only tokens of probability 0 from its query (pi^X = '
                        f'0/0) in {int(np.count_nonzero(impossible))} trajectory(ies)')


def read_P_file(path, name='P_file'):
  """A matrix from a .npy or comma-separated text file, as float64 (shape and stochasticity
  are checked by ``model.check_stochastic``). Raises ``ValueError`` with one line starting
  with ``name``: a missing path, a folder, an empty file, bytes that are no numeric matrix.
  numpy's warnings (loadtxt's "input contained no data") become that line instead of escaping
  to stderr."""
  if not os.path.exists(path):
    raise ValueError(f'{name} does not exist')
  if not os.path.isfile(path):
    raise ValueError(f'{name} is not a file (a K x K matrix, .npy or .csv)')
  if os.path.getsize(path) == 0:
    raise ValueError(f'{name} is empty (a K x K matrix, .npy or .csv)')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      P = np.load(path) if path.endswith('.npy') else np.loadtxt(path, delimiter=',', ndmin=2)
      return np.asarray(P, dtype=np.float64)
  except (ValueError, TypeError, OSError, EOFError, Warning) as e:
    why = ' '.join(str(e).split())[:120]  # one line, whatever bytes the file held
    raise ValueError(f'{name} is not a numeric K x K matrix ({why!r})') from None


def row_without_off_diagonal_mass(P):
  """The first row of ``P`` whose mass is all on the diagonal (the zero-diagonal chain has no
  next token after it: 0/0), or None."""
  P = np.asarray(P, np.float64)
  rows = np.flatnonzero((P * (1 - np.eye(P.shape[0]))).sum(1) <= 0)
  return int(rows[0]) if rows.size else None


def zero_diag_context_error(X0, window):
  """Why the zero-diagonal chain cannot start from ``X0`` (tokens; empty: a permutation of all
  K) with context ``window`` (0: growing), as a one-line flag error; None when it can.

  A token cannot follow itself, so a context holding only the query token has ``pi^X`` = 0/0.
  Emitted tokens always differ from the previous one, so every context of length >= 2 is safe
  once the first one holds two distinct tokens.
  """
  if window == 1:
    return ('--window=1 is invalid with the zero_diag variant: a one-token context has no next '
            'token without self-loops; allowed values are 0 (growing context) or >= 2')
  first = X0[-window:] if window else X0
  if X0 and len(set(first)) < 2:
    return (f'--X0={",".join(map(str, X0))} is invalid with the zero_diag variant: its first '
            f'context holds only token {first[-1]}, which cannot follow itself; give at least '
            f'two distinct tokens' + (' among its last --window ones' if window else ''))
  return None


def median_seed(top1):
  """The trial index whose final top-1 share is the sweep's lower median: sort the shares
  (stable, so ties go to the smaller index) and take position ``(n - 1) // 2``."""
  top1 = np.asarray(top1)
  if top1.size == 0:
    raise ValueError('median_seed needs at least one trial')
  return int(np.argsort(top1, kind='stable')[(top1.size - 1) // 2])


def example(seed, index, K, T, scale=1.0, zero_diag=False, window=None, X0=None, A=None):
  """The plotted trajectory: trial ``index`` of the sweep of root ``seed`` (same key), traced.

  Returns:
    dict of (T * K,) columns ``t`` (1..T), ``token``, ``frequency`` (count / context length
    after step t) and ``emitted`` (1 where x_t == token).
  Raises:
    ZeroMassError: the trajectory emitted a token of probability 0 (:func:`make_run_trial`).
  """
  X0 = tuple(int(x) for x in X0) if X0 else None
  run_trial = jax.jit(make_run_trial(K, T, scale, zero_diag, window, X0, A, trace=True))
  out = run_trial(common.trial_keys(seed, trials=index + 1)[index])
  _check_possible(np.asarray(out['impossible']))
  tokens, freqs = np.asarray(out['tokens']), np.asarray(out['freqs'])
  t = np.repeat(np.arange(1, T + 1), K)
  token = np.tile(np.arange(K), T)
  return {'t': t, 'token': token, 'frequency': freqs.reshape(-1),
          'emitted': (tokens[t - 1] == token).astype(int)}


def sweep_summary(frame):
  """Per variant: the mean final top-1 and top-2 shares and the trial index of the median
  top-1 share (:func:`median_seed`), from the seed-sweep table (columns variant, seed, top1,
  top2)."""
  out = {}
  for variant, g in frame.groupby('variant'):
    g = g.sort_values('seed')
    out[variant] = {'mean_top1': float(g['top1'].mean()), 'mean_top2': float(g['top2'].mean()),
                    'median_seed': int(g['seed'].iloc[median_seed(g['top1'].to_numpy())])}
  return out
