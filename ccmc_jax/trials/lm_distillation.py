"""Learning the CCMC from a language model's answers (the regime of the paper's Fig. 4, right:
query an LM with prompts and train a small model on its answers; beyond the paper).

The LM is queried with ``n`` real prompts (contexts of ``L`` tokens from the TRAINING blocks of
:mod:`ccmc_jax.trials.real_text`'s split), its next token is sampled (temperature 1), the copy
events (answer in the prompt) are kept and the CCMC is fitted to them by ``fit_mle``, the ridge
chosen on LM answers to validation prompts, for a grid of ``n`` (nested: the first ``n`` of one
seeded order). The same is done with the real next tokens of the same ``n`` prompts (the CCMC
fitted to the text, its ridge chosen on the real validation answers). Measured on held-out
prompts: the NLL per copy event of fresh LM answers, the KL from the LM's renormalised copy law
(its next-token law restricted to the prompt's tokens, renormalised) to the CCMC's, and the NLL
of the real held-out answers. ``floor_nll`` is the LM's own renormalised NLL of its fresh
answers: what a CCMC matching the LM exactly would score.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import gpt2
from ccmc_jax import sampling
from ccmc_jax import sparse_fit
from ccmc_jax import text
from ccmc_jax.trials import lm_repetition as lm
from ccmc_jax.trials import real_text

SOURCES = ('lm_answers', 'real_text')  # what the CCMC is fitted to
CHUNK = 4096  # contexts per LM query (bounds the (chunk, V) log-probabilities held at once)
COLUMNS = ('source', 'n', 'n_copy', 'copy_fraction', 'ridge', 'validation_nll',
           'heldout_nll_lm', 'kl_lm_copy', 'heldout_nll_text', 'floor_nll', 'n_heldout_copy')


@jax.jit
def _draw(key, offset, logp):
  """Row i of ``logp`` (N, V) sampled with ``fold_in(key, offset + i)``."""
  u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(
      offset + jnp.arange(logp.shape[0]))
  return sampling.categorical_from_uniform(u, logp)


def query(model: gpt2.GPT2, key, X):
  """The LM's sampled next token after each prompt (temperature 1; prompt i uses
  ``fold_in(key, i)``, so a prefix of the prompts gets the same answers) and its
  log-probability of each prompt token.

  Returns:
    (answers (N,) int32, lm_logp_X (N, L) float32).
  """
  answers, lp_X = [], []
  for start in range(0, len(X), CHUNK):
    lp = gpt2.next_token_log_probs(model, X[start:start + CHUNK])
    answers.append(np.asarray(_draw(key, start, jnp.asarray(lp))))
    lp_X.append(np.take_along_axis(lp, X[start:start + CHUNK], 1))
  return np.concatenate(answers).astype(np.int32), np.concatenate(lp_X)


def contexts(prep: real_text.Prepared, role, count, rng=None):
  """``count`` (prompt, real next token) samples of the blocks of ``role`` (every position,
  not only copy events): spread evenly in text order, or in a random order of ``rng`` (whose
  prefixes are the nested training sets)."""
  data = text.samples(prep.ids, prep.split.blocks(role), prep.train.prompts.shape[1],
                      copy_only=False)
  if rng is None:
    idx = lm.spread(len(data.answers), count)
  else:
    idx = rng.permutation(len(data.answers))[:count]
  return data.prompts[idx], data.answers[idx]


def _copy(X, y):
  keep = (X == y[:, None]).any(1)
  return X[keep], y[keep]


def fit_ccmc(X, y, V, ridges, validation):
  """fit_mle at each ridge on the copy events of (X, y); the ridge with the lowest validation
  NLL (copy events ``validation`` = (X, y)). Returns (log P, ridge, validation NLL)."""
  Xc, yc = _copy(X, y)
  if not len(yc):  # no copy event among the first n answers: nothing to fit (NaN row)
    return np.zeros((V, V), np.float32), float('nan'), float('nan')
  val = text.Samples(*validation, np.zeros(len(validation[1])), len(validation[1]))
  best = None
  for r in ridges:
    A = sparse_fit.fit_mle(Xc, yc, V, ridge=r).A_hat
    log_P = np.asarray(jax.nn.log_softmax(A, -1), np.float32)
    v = text.heldout_nll(log_P, val)
    if best is None or v < best[2]:
      best = (log_P, r, v)
  return best


def run(prep: real_text.Prepared, model: gpt2.GPT2, *, n_grid, ridges, validation, heldout,
        seed, progress=lambda msg: None) -> dict:
  """The whole experiment.

  Args:
    prep: ``real_text.prepare`` of the corpus (its split and vocabulary: the LM's).
    model: the LM (checked by ``lm_repetition.check_model_folder``).
    n_grid: numbers of training prompts (each >= 1; the largest must not exceed the training
      samples).
    ridges: the ridge grid.
    validation, heldout: prompts queried on the validation and held-out blocks.
    seed: root seed (training order, LM answers: ``fold_in(PRNGKey(seed), 0/1/2)`` for the
      train / validation / held-out queries).
  Returns:
    dict ``rows`` (columns :data:`COLUMNS`, one row per (source, n)) and ``summary``.
  """
  V = len(prep.vocab)
  key = jax.random.PRNGKey(seed)
  n_grid = sorted(int(n) for n in n_grid)
  X_tr, y_text = contexts(prep, 0, n_grid[-1], np.random.default_rng(seed))
  y_lm, _ = query(model, jax.random.fold_in(key, 0), X_tr)
  X_va, y_va_text = contexts(prep, 1, validation)
  y_va_lm, _ = query(model, jax.random.fold_in(key, 1), X_va)
  X_he, y_he_text = contexts(prep, 2, heldout)
  y_he_lm, lp_he = query(model, jax.random.fold_in(key, 2), X_he)
  progress(f'queried the LM with {len(X_tr)} training, {len(X_va)} validation and '
           f'{len(X_he)} held-out prompts')
  keep = (X_he == y_he_lm[:, None]).any(1)
  lm_answers = text.Samples(X_he[keep], y_he_lm[keep], np.flatnonzero(keep), len(keep))
  real = text.Samples(*_copy(X_he, y_he_text), np.zeros(0), len(X_he))
  lq, _ = lm.renormalised_log_likelihood(lp_he[keep], X_he[keep], y_he_lm[keep])
  floor = float(-np.mean(np.asarray(lq, np.float64)))
  targets = {'lm_answers': (y_lm, _copy(X_va, y_va_lm)),
             'real_text': (y_text, _copy(X_va, y_va_text))}
  rows = {c: [] for c in COLUMNS}
  for source in SOURCES:
    y_tr, val = targets[source]
    for n in n_grid:
      log_P, ridge, v = fit_ccmc(X_tr[:n], y_tr[:n], V, ridges, val)
      n_copy = int((X_tr[:n] == y_tr[:n, None]).any(1).sum())
      kl = float(np.mean(np.asarray(lm.copy_kl(lp_he, log_P, X_he), np.float64)))
      row = dict(source=source, n=n, n_copy=n_copy, copy_fraction=n_copy / n, ridge=ridge,
                 validation_nll=v, heldout_nll_lm=text.heldout_nll(log_P, lm_answers),
                 kl_lm_copy=kl, heldout_nll_text=text.heldout_nll(log_P, real),
                 floor_nll=floor, n_heldout_copy=len(lm_answers.answers))
      for c in COLUMNS:
        rows[c].append(row[c])
      progress(f'{source} n={n}: {n_copy} copy events, ridge {ridge:g}, held-out NLL of LM '
               f'answers {row["heldout_nll_lm"]:.4f} (floor {floor:.4f}), KL {kl:.4f}')
  return {'rows': rows, 'summary': summary(rows)}


def summary(rows) -> dict:
  """Per source: the held-out NLL of LM answers and the KL at the smallest and largest n."""
  out = {}
  src, n = np.asarray(rows['source']), np.asarray(rows['n'])
  for s in SOURCES:
    m = src == s
    if not m.any():
      continue
    lo, hi = np.argmin(np.where(m, n, np.inf)), np.argmax(np.where(m, n, -np.inf))
    for c in ('heldout_nll_lm', 'kl_lm_copy'):
      out[f'{s}/{c}'] = [float(rows[c][lo]), float(rows[c][hi])]
  out['floor_nll'] = float(rows['floor_nll'][0]) if rows['floor_nll'] else float('nan')
  return out
