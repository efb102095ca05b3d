"""A trained language model beside the CCMC on real text: how much it repeats, and how much of
its copying a 1-layer attention (a CCMC, paper Lemma 2.2) captures (paper Sec. 4, Fig. 5 left).

The LM is a local GPT-2-style folder whose token ``k`` is index ``k`` of the real-text
experiment's vocabulary (``text.build_vocab`` of the same corpus and ``K``: ``V = K + 1``
tokens, ``<unk>`` last). On the held-out prompts of :mod:`ccmc_jax.trials.real_text` (same
corpus, K, L, seed: same prompts) and the same ``T`` for every source it generates greedily
(``lm_greedy``), at temperature 1 (``lm_sample``) and 0.7 (``lm_sample_t0.7``), beside the
fitted CCMC (growing and windowed context), the bigram chain and the real continuation, and
measures the repetition metrics of ``text.repetition_metrics``. Beyond its context the LM sees
a sliding window of its last ``n_positions`` tokens whose absolute positions restart at 0
(:func:`ccmc_jax.gpt2.decode`).

Likelihoods: the LM's held-out NLL per token against the bigram chain's (the same token pairs),
and on held-out copy events (the answer occurs in the prompt) the LM's NLL, its NLL after
restricting its law to the prompt's tokens and renormalising (what a CCMC can express), and the
fitted CCMC's.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import gpt2
from ccmc_jax import text
from ccmc_jax.trials import real_text

LM_SOURCES = {'lm_greedy': 0.0, 'lm_sample': 1.0, 'lm_sample_t0.7': 0.7}  # source -> temperature
SOURCES = tuple(LM_SOURCES) + real_text.SOURCES
PROMPT_T = 1000  # real_text's default T: prompts chosen as it chooses them (same prompts)


# ---------------------------------------------------------------------------------------------
# The corpus, and the model folder against the suite's vocabulary


def read_corpus(corpus, corpus_file=None) -> str:
  """The text of ``corpus_file`` when given, else of the built-in ``corpus`` ('kjv' or
  'python_docs'), as experiments.real_text reads them (text.TextError when unusable)."""
  if corpus_file is not None:
    return text.read_text_file(corpus_file)
  return text.read_kjv() if corpus == 'kjv' else text.read_python_docs()


def check_model_folder(model_dir, vocab) -> gpt2.GPT2Config:
  """The folder's config (weights not read) agrees with ``vocab`` (the suite's, K + 1 tokens):
  ``vocab_size == K + 1`` and, when the folder has a ``vocab.json`` (word -> id), that it is
  exactly ``{vocab[k]: k}``.

  Raises:
    gpt2.GPT2Error (``arg`` = 'model_dir', one line) otherwise.
  """
  config = gpt2.check_model_dir(model_dir)
  V = len(vocab)
  if config.vocab_size != V:
    raise gpt2.GPT2Error('model_dir', f'={model_dir}: config.json has vocab_size='
                         f'{config.vocab_size}, but the corpus and K give K + 1 = {V} tokens '
                         f'(the LM must be trained on this vocabulary)')
  path = os.path.join(model_dir, 'vocab.json')
  if os.path.isfile(path):
    try:
      with open(path, encoding='utf-8') as f:
        words = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise gpt2.GPT2Error('model_dir', f'={model_dir}: vocab.json is not readable JSON '
                           f'({e})') from None
    want = {w: k for k, w in enumerate(vocab)}
    if words != want:
      bad = next((w for w in want if words.get(w) != want[w]), None) if isinstance(
          words, dict) else None
      detail = (f'e.g. {bad!r} is {words.get(bad)!r} there, {want[bad]} here' if bad is not None
                else 'other words or not a JSON object word -> id')
      raise gpt2.GPT2Error('model_dir', f'={model_dir}: vocab.json is not the suite\'s '
                           f'vocabulary for this corpus and K ({detail})')
  return config


# ---------------------------------------------------------------------------------------------
# Likelihoods


@functools.lru_cache(maxsize=None)
def _chunk_program(config: gpt2.GPT2Config, batch: int):
  """jit: (M, S) chunks -> (M, S - 1) log-probabilities of tokens 1..S-1 of each chunk."""
  def chunk_log_probs(params, chunks):
    def one(c):
      lp = jax.nn.log_softmax(gpt2.forward(params, config, c), -1)
      return jnp.take_along_axis(lp[:-1], c[1:, None], 1)[:, 0]
    return jax.lax.map(one, chunks, batch_size=batch)
  return jax.jit(chunk_log_probs)


def chunks(ids, blocks, S):
  """Cut each block into chunks of ``S`` tokens overlapping by one (starts ``s, s + S - 1,
  ...``): predicting tokens 1..S-1 of every chunk predicts each token of a block but its first
  exactly once, the pairs ``text.bigram_nll`` scores. Returns (M, S) int32 chunks (zero-padded)
  and the (M, S - 1) mask of real targets."""
  ids = np.asarray(ids, np.int32)
  out, mask = [], []
  for s, e in blocks:
    for c in range(s, e - 1, S - 1):
      piece = ids[c:min(c + S, e)]
      out.append(np.pad(piece, (0, S - len(piece))))
      mask.append(np.arange(1, S) < len(piece))
  if not out:
    return np.zeros((0, S), np.int32), np.zeros((0, S - 1), bool)
  return np.stack(out), np.stack(mask)


def lm_nll_per_token(model: gpt2.GPT2, ids, blocks, batch=64) -> float:
  """Mean NLL per token (nats) of the LM on ``blocks``, each token predicted from the previous
  tokens of its chunk (:func:`chunks`, up to n_positions - 1 of them)."""
  X, mask = chunks(ids, blocks, model.config.n_positions)
  if not mask.any():
    return float('nan')
  lp = np.asarray(_chunk_program(model.config, batch)(model.params, jnp.asarray(X)), np.float64)
  return float(-lp[mask].mean())


def _first(X):
  """(L,) bool: position l holds the first occurrence of its token in the prompt."""
  same = X[:, None] == X[None, :]
  return ~jnp.any(jnp.tril(same, -1), axis=1)


def copy_log_law(lm_logp_X, X):
  """log q(x_l) at every prompt position, q = the LM's next-token law restricted to the tokens
  of the prompt ``X`` (L,) and renormalised; ``lm_logp_X[l]`` = the LM's log p(x_l)."""
  return lm_logp_X - jax.nn.logsumexp(jnp.where(_first(X), lm_logp_X, -jnp.inf))


def ccmc_log_law(log_P, X):
  """log pi^X(x_l) at every prompt position for the CCMC with base chain ``P`` (paper Lemma
  2.2): ``pi^X_j ∝ m_j(X) P[x_L, j]`` summed over the positions holding token j."""
  s = log_P[X[-1], X]
  same = X[:, None] == X[None, :]
  return jax.nn.logsumexp(jnp.where(same, s[None, :], -jnp.inf), axis=1) - jax.nn.logsumexp(s)


@jax.jit
def copy_kl(lm_logp_X, log_P, X):
  """Per prompt: KL(q || pi^X) over the distinct prompt tokens, q the LM's renormalised copy
  law (:func:`copy_log_law`) and pi^X the CCMC's (:func:`ccmc_log_law`).

  Args:
    lm_logp_X: (N, L) the LM's log-probability of each prompt token.
    log_P: (V, V) the CCMC's log base chain.
    X: (N, L) prompts.
  Returns:
    (N,) float32 KL in nats.
  """
  log_P = jnp.asarray(log_P, jnp.float32)

  def one(lp, x):
    lq, lpi = copy_log_law(lp, x), ccmc_log_law(log_P, x)
    return jnp.sum(jnp.where(_first(x), jnp.exp(lq) * (lq - lpi), 0.0))

  return jax.vmap(one)(jnp.asarray(lm_logp_X, jnp.float32), jnp.asarray(X, jnp.int32))


@jax.jit
def renormalised_log_likelihood(lm_logp_X, X, y):
  """Per copy event: log q(y), q the LM's law restricted to the prompt and renormalised
  (``y`` must occur in ``X``); and the LM's total probability of the prompt's tokens."""
  def one(lp, x, t):
    lq = copy_log_law(lp, x)
    at = jnp.argmax(x == t)
    mass = jnp.exp(jax.nn.logsumexp(jnp.where(_first(x), lp, -jnp.inf)))
    return lq[at], mass
  return jax.vmap(one)(jnp.asarray(lm_logp_X, jnp.float32), jnp.asarray(X, jnp.int32),
                       jnp.asarray(y, jnp.int32))


def spread(n_total, count):
  """``min(count, n_total)`` indices evenly spread over ``range(n_total)`` (in order)."""
  if n_total <= count:
    return np.arange(n_total)
  return np.linspace(0, n_total - 1, count).round().astype(np.int64)


def nll_table(model, prep: real_text.Prepared, log_P, log_B, copy_events):
  """Columns of ``lm_repetition_nll.csv``: held-out NLL per token (LM, bigram chain) and per
  copy event on ``copy_events`` held-out copy events spread over the held-out blocks (LM, LM
  renormalised on the prompt, and the CCMCs of ``log_P``); ``copy_mass`` is the LM's mean
  probability of the prompt's tokens on those events."""
  held = prep.split.blocks(2)
  idx = spread(len(prep.heldout.answers), copy_events)
  X, y = prep.heldout.prompts[idx], prep.heldout.answers[idx]
  lp = gpt2.next_token_log_probs(model, X)
  lp_X = np.take_along_axis(lp, X, 1)
  lq, mass = (np.asarray(a, np.float64) for a in renormalised_log_likelihood(lp_X, X, y))
  n_tokens = int(sum(e - s - 1 for s, e in held if e - s > 1))
  rows = [('all_tokens', 'lm', lm_nll_per_token(model, prep.ids, held), n_tokens),
          ('all_tokens', 'bigram_chain', text.bigram_nll(log_B, prep.ids, held), n_tokens),
          ('copy_events', 'lm', float(-np.mean(lp[np.arange(len(y)), y], dtype=np.float64)),
           len(y)),
          ('copy_events', 'lm_renormalised', float(-lq.mean()), len(y))]
  data = text.Samples(X, y, idx, len(y))
  rows += [('copy_events', m, text.heldout_nll(log_P[m], data), len(y)) for m in real_text.MODELS]
  cols = {'events': [r[0] for r in rows], 'model': [r[1] for r in rows],
          'nll': [r[2] for r in rows], 'count': [r[3] for r in rows]}
  cols['copy_mass'] = [float(mass.mean()) if r[:2] == ('copy_events', 'lm') else np.nan
                       for r in rows]
  return cols


def summary(text_cols, nll_cols) -> dict:
  """The must-show numbers: mean seq-rep-4 per source and its ratios, the NLLs and the share
  of the LM's copy-event gain over uniform P that the fitted CCMC captures."""
  src = np.asarray(text_cols['source'])
  rep = {s: float(np.mean(np.asarray(text_cols['seq_rep_4'])[src == s])) for s in SOURCES}
  ratio = lambda a, b: rep[a] / rep[b] if rep[b] > 0 else float('inf')
  nll = {f'{e}/{m}': v for e, m, v in zip(nll_cols['events'], nll_cols['model'],
                                          nll_cols['nll'])}
  gain = nll['copy_events/uniform_P'] - nll['copy_events/lm_renormalised']
  return {'mean_seq_rep_4': rep, 'nll': nll,
          'lm_greedy_over_corpus_seq_rep_4': ratio('lm_greedy', 'corpus'),
          'lm_sample_over_lm_greedy_seq_rep_4': ratio('lm_sample', 'lm_greedy'),
          'ccmc_share_of_lm_copy_gain': float(
              (nll['copy_events/uniform_P'] - nll['copy_events/mle']) / gain)
          if gain > 0 else float('nan')}


def run(prep: real_text.Prepared, model: gpt2.GPT2, *, L, T, ridges, smoothing, seed,
        copy_events, progress=lambda msg: None) -> dict:
  """The whole experiment (``prep`` from ``real_text.prepare(corpus, K, L, max(T, PROMPT_T),
  prompts, seed)``, ``model`` checked by :func:`check_model_folder`).

  Returns:
    dict with ``text`` and ``curves`` (columns as real_text's, for :data:`SOURCES`), ``nll``
    (:func:`nll_table`), ``fit`` (real_text's fit columns), ``choices`` and ``summary``.
  """
  fit_cols, log_P, log_B, choices = real_text.fit_models(prep, list(ridges), list(smoothing),
                                                         progress)
  key = jax.random.PRNGKey(seed)
  tokens, X = real_text.generate(key, prep, log_P['mle'], log_B, L, T)
  for i, (source, temperature) in enumerate(LM_SOURCES.items()):
    ids, _ = gpt2.decode(model, X, T, key=jax.random.fold_in(key, 3 + i),
                         temperature=temperature)
    tokens[source] = ids.astype(np.int64)
    progress(f'{source}: {len(X)} x {T} tokens')
  text_cols, curves = real_text.measure(prep, tokens, X, SOURCES)
  nll_cols = nll_table(model, prep, log_P, log_B, copy_events)
  return {'text': text_cols, 'curves': curves, 'nll': nll_cols, 'fit': fit_cols,
          'choices': choices, 'summary': summary(text_cols, nll_cols)}
