"""Input checks of the public functions: one ``ValueError`` naming the argument, what is expected
and what was given (the style of :func:`ccmc_jax.sparse_fit.fit_mle`).

Two kinds of check (``docs/checks.md`` lists which function checks what):

* **static** -- shapes, dtypes and Python arguments (sizes, flags). Shapes are known while a
  function is traced, so these run under ``jit``/``vmap`` too, once per compilation: nothing
  is paid at run time and an inconsistent shape never returns a result.
* **values** -- NaN/inf scores, token ids outside ``[0, K)``, negative weights. They need the
  numbers, so they run only on concrete arrays (eager calls); under ``jit``/``vmap``/``grad``
  the arguments are tracers (:func:`concrete` returns None) and the value checks are skipped.
  What a function then returns for bad values is said in its docstring (NaN in, NaN out).

Everything here is host-side Python; none of it is traced into a computation.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x):
  """``x`` as a NumPy array, or None when it is traced (inside ``jit``/``vmap``/``grad``)."""
  if isinstance(x, (jax.core.Tracer, jax.ShapeDtypeStruct)):
    return None
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def shape_of(x):
  """The shape of an array-like (a traced one included) without copying it."""
  return tuple(np.shape(x)) if not hasattr(x, 'shape') else tuple(x.shape)


def dtype_of(x):
  """The dtype of an array-like (a Python list as NumPy would store it)."""
  return x.dtype if hasattr(x, 'dtype') else np.asarray(x).dtype


def size(name, value, lo=1, hi=None):
  """A static integer argument (a size: K, L, n, T, capacity) in ``[lo, hi]``; returns ``int``.

  Sizes fix array shapes, so a traced value, a float, a bool or a string is refused.
  """
  if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
      or value < lo or (hi is not None and value > hi)):
    allowed = f'an integer >= {lo}' if hi is None else f'an integer in [{lo}, {hi}]'
    got = (f'a traced value (it fixes a shape: pass a Python int, a static argument under jit)'
           if isinstance(value, jax.core.Tracer) else repr(value))
    raise ValueError(f'{name} must be {allowed} (a Python int), got {got}')
  return int(value)


def number(name, value, lo=None, hi=None, lo_open=False):
  """A scalar argument (``scale``, ``ridge``, ``tol``): checked when concrete; a finite number in
  ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``). A traced scalar passes unchecked."""
  host = concrete(value)
  if host is None:
    return value
  ok = host.ndim == 0 and np.issubdtype(host.dtype, np.number) and not np.issubdtype(
      host.dtype, np.complexfloating)
  v = float(host) if ok else None
  if ok:
    ok = np.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo)) and (
        hi is None or v <= hi)
  if not ok:
    rng = f'{"(" if lo_open else "["}{"-inf" if lo is None else lo}, {"inf" if hi is None else hi}]'
    raise ValueError(f'{name} must be a finite number in {rng}, got {value!r}')
  return value


def square(name, M, what='scores', batch=False):
  """``M`` must be (K, K) (or (..., K, K) with ``batch``) with a floating dtype; returns K."""
  shape = shape_of(M)
  ok = (len(shape) >= 2 if batch else len(shape) == 2) and shape[-1] == shape[-2]
  if not ok:
    d = 'd' if what == 'attention weights' else 'K'
    want = f'a (..., {d}, {d}) array' if batch else f'a square ({d}, {d}) matrix'
    raise ValueError(f'{name} must be {want} of {what}, got shape {shape}')
  if shape[-1] < 1:
    raise ValueError(f'{name} must have K >= 1 rows, got shape {shape}')
  if not np.issubdtype(dtype_of(M), np.floating) and not np.issubdtype(dtype_of(M), np.integer):
    raise ValueError(f'{name} must hold real numbers, got dtype {dtype_of(M)}')
  return shape[-1]


def no_nan(name, M, neg_inf=True, pos_inf=False):
  """When concrete: no NaN in ``M`` (and no ``+inf`` unless ``pos_inf``, no ``-inf`` unless
  ``neg_inf``: scores and ``log P`` may hold ``-inf``, a forbidden transition)."""
  host = concrete(M)
  if host is None or not np.issubdtype(host.dtype, np.floating):
    return M
  bad = np.isnan(host)
  if not pos_inf:
    bad |= np.isposinf(host)
  if not neg_inf:
    bad |= np.isneginf(host)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    allowed = 'finite numbers' + (' or -inf' if neg_inf else '')
    raise ValueError(f'{name} must hold {allowed}, got {host[where]} at index {where}')
  return M


def token_ids(name, X, K, min_length=1, ndim=None, pad=False):
  """Token ids ``X`` (..., L): an integer dtype and ``L >= min_length`` always (``ndim`` exact
  dimensions when given), ids in ``[0, K)`` when concrete (``[-1, K)`` with ``pad``: -1 is
  padding)."""
  shape = shape_of(X)
  if (len(shape) < 1 if ndim is None else len(shape) != ndim):
    want = 'at least 1-D (..., L)' if ndim is None else f'{ndim}-D'
    raise ValueError(f'{name} must be an integer array {want} of token ids, got shape {shape}')
  if not np.issubdtype(dtype_of(X), np.integer):
    raise ValueError(f'{name} must hold integer token ids, got dtype {dtype_of(X)}')
  if shape[-1] < min_length:
    raise ValueError(f'{name} must have length L >= {min_length} on its last axis, got shape '
                     f'{shape}')
  host = concrete(X)
  if host is not None and host.size:
    lo = -1 if pad else 0
    low, high = host.min(), host.max()
    if low < lo or high >= K:
      bad = low if low < lo else high
      raise ValueError(f'{name} holds token id {bad}, outside [{lo}, K) = [{lo}, {K})')
  return X


@functools.lru_cache(maxsize=None)
def _raw_key_shape():
  """The shape of a raw ``jax.random.PRNGKey`` under the default implementation ((2,) for
  threefry), without computing one."""
  return tuple(jax.eval_shape(jax.random.PRNGKey, 0).shape)


def key(name, k):
  """A PRNG key: a typed key (``jax.random.key``, shape ()) or a raw ``jax.random.PRNGKey``
  (uint32 of the default implementation's shape, (2,)). Static (shape and dtype): checked under
  ``jit``/``vmap`` too."""
  shape, dtype = shape_of(k), dtype_of(k)
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    ok, want = shape == (), 'a single typed key of shape ()'
  else:
    raw = _raw_key_shape()
    ok, want = dtype == np.uint32 and shape == raw, f'a PRNG key (jax.random.PRNGKey(seed): ' \
        f'uint32 of shape {raw}, or jax.random.key(seed))'
  if not ok:
    raise ValueError(f'{name} must be {want}, got {dtype} of shape {shape}')
  return k


def same(name, value, expected, what):
  """``value == expected`` for a size that two arguments must share."""
  if value != expected:
    raise ValueError(f'{name} must have {what} {expected}, got {value}')


def prompt_sampler(prompt_fn, K, L):
  """A prompt sampler made by :func:`ccmc_jax.sampling.uniform_prompt` (or any sampler with
  ``K``/``L`` attributes) must draw over the scores' ``K`` tokens with length ``L``."""
  if not callable(prompt_fn):
    raise ValueError(f'prompt_fn must be a prompt sampler (e.g. uniform_prompt(K, L)), got '
                     f'{type(prompt_fn).__name__}')
  for attr, want in (('K', K), ('L', L)):
    have = getattr(prompt_fn, attr, None)
    if have is not None and have != want:
      what = ('tokens over [0, K) with K = {} (the scores are K x K)' if attr == 'K' else
              'prompts of length L = {} (the L argument)').format(want)
      raise ValueError(f'prompt_fn must draw {what}, got a sampler with {attr} = {have}')


def prompts_drawn(X, n, L, K):
  """What a prompt sampler returned: (n, L) integer ids (ids in [0, K) when concrete)."""
  shape = shape_of(X)
  if shape != (n, L):
    raise ValueError(f'prompt_fn must return prompts of shape (n, L) = ({n}, {L}), got {shape}')
  return token_ids('prompt_fn(u)', X, K)


def as_float_array(M):
  """``jnp.asarray`` for an already checked real array (integers become float32)."""
  M = jnp.asarray(M)
  return M if jnp.issubdtype(M.dtype, jnp.floating) else M.astype(jnp.float32)


def positive(name, x):
  """When concrete: every entry of ``x`` (a scalar or an array, e.g. sample sizes) finite > 0."""
  host = concrete(x)
  if host is None:
    return x
  v = np.asarray(host, np.float64) if np.issubdtype(host.dtype, np.number) else None
  if v is None or v.size == 0 or not np.all(np.isfinite(v) & (v > 0)):
    raise ValueError(f'{name} must be finite and > 0 (a scalar or an array), got {x!r:.80}')
  return x


def dataset(data, K, name='data'):
  """A :class:`ccmc_jax.sampling.Dataset` over ``K`` tokens: ``query`` (..., N) and ``y``
  (..., N) integer ids, ``counts`` (..., N, K) real, N >= 1, always; when concrete, ids in
  ``[0, K)`` and finite non-negative counts. Returns N."""
  try:
    query, counts, y = data
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a Dataset(query, counts, y), got '
                     f'{type(data).__name__}') from None
  qs, cs, ys = shape_of(query), shape_of(counts), shape_of(y)
  if not qs or cs != qs + (K,) or ys != qs:
    raise ValueError(f'{name} must have query (..., N), counts (..., N, K) = (..., N, {K}) and '
                     f'y (..., N); got shapes {qs}, {cs} and {ys}')
  if qs[-1] < 1:
    raise ValueError(f'{name} must hold N >= 1 samples, got shape {qs} for query')
  token_ids(f'{name}.query', query, K)
  token_ids(f'{name}.y', y, K)
  host = concrete(counts)
  if host is not None:
    bad = ~(np.isfinite(host) & (np.asarray(host, np.float64) >= 0))
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f'{name}.counts must hold finite counts >= 0, got {host[where]} at index '
                       f'{where}')
  return qs[-1]
