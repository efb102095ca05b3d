"""How far a rerun's results may lie from the reference: a tolerance per column of every results
CSV, measured across machines and code paths.

The committed ``results/`` are reproduced byte for byte by a rerun on the same machine with the
pinned environment (``requirements.txt``). Another machine (another CPU instruction set, thread
count or XLA optimisation level) changes float32 round-off, and the fits, Monte-Carlo Fisher
pseudo-inverses and sampled trajectories carry that round-off into the results. Each column
here has an ``(rtol, atol)`` pair for ``numpy.isclose(rerun, reference, rtol, atol)``, a few
times the largest deviation measured over emulated machines (README, "Reproducibility"), and
columns that are ill-conditioned by construction are *informational*: compared and reported,
never a failure:

* the centred-W error ``error_W`` of sample complexity: when a token is never an answer of some
  query in a trial its MLE score does not exist (it runs to -inf, held at about ``log ridge`` by
  the ridge), so the gauge-fixed scores move with round-off although ``P`` does not;
* round-off measurements (``max_abs_diff`` of attention vs CCMC, ``mean_abs_diff``): values of
  order float32 epsilon whose every bit is noise; an absolute tolerance well below the check's
  own (1e-5) still says they stay at round-off;
* timings (benchmarks) and the formatted ``detail`` text of the claims.

Integer columns that count iterations or visits are compared with an absolute tolerance in
their own unit where round-off can move them (a Newton stopping test crossed one step later).

:func:`for_table` is what the experiments record in each sidecar's ``tolerances`` field and
what ``ccmc_jax.compare`` uses by default. Pure data and functions: no JAX, no file access.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

DEFAULT_RTOL, DEFAULT_ATOL = 1e-5, 1e-8  # columns with no entry: numpy.isclose's scale


class Tolerance(NamedTuple):
  """``|rerun - reference| <= atol + rtol |reference|``; informational: reported, not failing."""
  rtol: float = DEFAULT_RTOL
  atol: float = DEFAULT_ATOL
  informational: bool = False


EXACT = Tolerance(0.0, 0.0)
INFO = Tolerance(0.0, 0.0, True)  # informational, no useful scale (text, timings)


def _info(rtol, atol):
  return Tolerance(rtol, atol, True)


# Tolerances of the non-key columns of every results CSV (key columns are matched exactly).
# Measured deviations behind each number: README "Reproducibility".
TABLES = {}  # filled below


def for_table(name) -> Optional[dict]:
  """The tolerances of results table ``name`` (``sample_complexity``) as a JSON-ready dict
  column -> {"rtol", "atol", "informational"}; None for a table not listed."""
  cols = TABLES.get(name)
  if cols is None:
    return None
  return {c: {'rtol': t.rtol, 'atol': t.atol, 'informational': t.informational}
          for c, t in cols.items()}


def parse(record) -> dict:
  """A sidecar's ``tolerances`` field back into column -> Tolerance.

  Raises:
    ValueError: (one line) not an object of columns to {"rtol", "atol"[, "informational"]}
      with finite numbers >= 0.
  """
  if not isinstance(record, dict):
    raise ValueError(f'tolerances is a {type(record).__name__}, not an object of columns')
  out = {}
  for column, t in record.items():
    if not isinstance(t, dict) or not {'rtol', 'atol'} <= set(t):
      raise ValueError(f'tolerances of column {column!r} is not an object with rtol and atol')
    values = []
    for field in ('rtol', 'atol'):
      v = t[field]
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v)
                                                                        and v >= 0):
        raise ValueError(f'tolerances of column {column!r}: {field}={v!r} is not a finite '
                         f'number >= 0')
      values.append(float(v))
    info = t.get('informational', False)
    if not isinstance(info, bool):
      raise ValueError(f'tolerances of column {column!r}: informational={info!r} is not '
                       f'true or false')
    out[str(column)] = Tolerance(*values, info)
  return out


# Key columns of the tables written without a sidecar (the sidecar's ``keys`` wins otherwise).
KEYS = {'claims': ['id']}
