"""Helpers shared by the per-figure trials: PRNG keys, the log-log slope, the zero-diagonal chain.

Trial keys, one convention for every figure:

  setting key  = fold_in(... fold_in(fold_in(PRNGKey(seed), path[0]), path[1]) ..., path[-1])
  key of trial i = fold_in(setting key, i)

where ``path`` is the figure's setting written as integers (e.g. ``(K, L)`` or
``(K, L, int(cross))``; a figure with two parts puts a part number first). Trial ``i`` of a
setting therefore draws the same numbers whatever other settings or how many trials run, and
two settings never share a key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def setting_key(seed, *path):
  """``fold_in`` chain of the integers ``path`` from ``PRNGKey(seed)`` (see the module doc)."""
  key = jax.random.PRNGKey(seed)
  for v in path:
    key = jax.random.fold_in(key, int(v))
  return key


def trial_keys(seed, *path, trials):
  """(trials, 2) keys: key of trial ``i`` is ``fold_in(setting_key(seed, *path), i)``."""
  root = setting_key(seed, *path)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(trials))


def loglog_slope(x, y):
  """Least-squares slope of log(y) against log(x) (e.g. error ~ n^slope; -1 is the 1/n rate)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def mean_slopes(frame, by, x='n', y='error'):
  """{group: slope of log(mean y over trials) against log(x)} for every group of ``by`` with at
  least two values of ``x`` (``frame``: a long-format results table, one row per trial)."""
  out = {}
  for group, g in frame.groupby(by):
    m = g.groupby(x)[y].mean()
    if len(m) >= 2:
      out[group] = loglog_slope(m.index.values, m.values)
  return out


def chain_log_P(A, zero_diag=False):
  """log P of the base chain from scores ``A``: ``log_softmax(A)`` (paper Sec. 2), or, with
  ``zero_diag`` (a bool, may be traced), the chain without self-loops: the diagonal of ``A``
  set to -inf, so that ``exp(chain_log_P(A, True)) == model.zero_diagonal(softmax(A))`` (up to
  rounding; paper Fig. 5, lower panels)."""
  A = jnp.asarray(A)
  A = jnp.where(zero_diag & jnp.eye(A.shape[-1], dtype=bool), -jnp.inf, A)
  return jax.nn.log_softmax(A, axis=-1)


def finite_max(x, axis=None):
  """``x.max(axis)``, NaN wherever a reduced value is not finite: XLA's fused max reduction can
  turn an all-NaN slice into ``-inf``, which would pass a ``<= tol`` check."""
  x = jnp.asarray(x)
  return jnp.where(jnp.isfinite(x).all(axis=axis), x.max(axis=axis), jnp.nan)


def nan_max(values):
  """The maximum of a column or array as a float, NaN when any value is NaN (pandas' and
  ``np.nanmax``'s maxima skip NaN, which would hide a failed comparison)."""
  values = np.asarray(values, np.float64)
  return float('nan') if values.size == 0 or np.isnan(values).any() else float(values.max())


def within(value, tol):
  """Whether ``0 <= value <= tol``; NaN (and -inf, an impossible maximum of absolute values)
  fail."""
  return bool(0 <= value <= tol)


def concat_columns(parts, order=None):
  """One dict of columns from several: each part maps a column name to an array or a scalar
  (broadcast to the part's length, the longest array in it); ``order`` picks the columns."""
  parts = list(parts)
  names = order or list(dict.fromkeys(k for p in parts for k in p))
  out = {}
  for name in names:
    pieces = []
    for p in parts:
      size = max((np.size(v) for v in p.values() if np.ndim(v)), default=1)
      v = p[name]
      pieces.append(np.asarray(v).reshape(-1) if np.ndim(v) else
                    np.full(size, v, dtype=object if isinstance(v, str) else None))
    out[name] = np.concatenate(pieces)
  return out
