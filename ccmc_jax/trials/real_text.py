"""The real-text experiment: the paper's CCMC fitted to real prose, its held-out likelihood, and
the repetition of what it generates (paper Sec. 2, Lemma 2.2; Sec. 4 and Fig. 5).

Steps (:func:`run`): tokenize, split the token stream into contiguous blocks (train /
validation / held-out), vocabulary = the ``K`` most frequent training tokens + ``<unk>``
(``V = K + 1`` states), copy-event samples (prompt = previous ``L`` tokens, answer = next token,
kept when the answer occurs in the prompt); the convex MLE of the scores with
``ccmc_jax.fit_mle`` at each ridge of a grid, the ridge chosen by validation NLL; the held-out
NLL per copy event of the fitted CCMC against two fixed-``P`` CCMCs (uniform ``P``: ``pi = m/L``;
the smoothed training bigram matrix, renormalised on the prompt); then ``T`` tokens after each
held-out prompt from the fitted CCMC (growing context, the paper's process; and a sliding window
of ``L``), from the bigram Markov chain, and the real continuation, with their repetition
metrics. Returns plain column dicts; the caller writes them.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import jax
import numpy as np

from ccmc_jax import sparse_fit
from ccmc_jax import text

BLOCKS = 50              # contiguous blocks of the token stream
VALIDATION = HELDOUT = 0.1  # fractions of the blocks
LAST = 200               # top-k shares and distinct tokens over the last LAST tokens
WORDS = 40               # tokens of each sample text kept for the figure
PROMPT_WORDS = 30        # last tokens of each prompt kept for the figure
SOURCES = ('ccmc', 'ccmc_window', 'bigram', 'corpus')
MODELS = ('mle', 'uniform_P', 'bigram_P')


class Prepared(NamedTuple):
  vocab: list
  ids: np.ndarray
  split: text.Split
  train: text.Samples
  validation: text.Samples
  heldout: text.Samples
  positions: np.ndarray  # (prompts,) answer index of each generation prompt


def prepare(corpus_text, K, L, T, prompts, seed, blocks=BLOCKS) -> Prepared:
  """Tokens, split, vocabulary, copy events and generation prompts.

  Raises text.TextError (message without a flag name) when the text is too small: fewer than
  ``K`` distinct training tokens, blocks shorter than ``L + T``, or no copy event in a split.
  """
  tokens = text.tokenize(corpus_text)
  if len(tokens) < blocks * 2:
    raise text.TextError(f'has only {len(tokens)} tokens, too few to split into {blocks} '
                         'blocks: too small')
  split = text.block_split(len(tokens), blocks, seed, VALIDATION, HELDOUT)
  train_tokens = [t for s, e in split.blocks(0) for t in tokens[s:e]]
  distinct = len(set(train_tokens) - {text.UNK})
  if distinct < K:
    raise text.TextError(f'has only {distinct} distinct tokens in its training blocks, fewer '
                         f'than --K={K}: too small')
  vocab = text.build_vocab(train_tokens, K)
  ids = text.encode(tokens, vocab)
  data = [text.samples(ids, split.blocks(r), L) for r in range(3)]
  for name, d in zip(text.SPLITS, data):
    if not len(d.answers):
      raise text.TextError(f'gives no {name} copy event at --L={L}: too small')
  positions = text.prompt_positions(split.blocks(2), L, T, prompts)
  if not len(positions):
    longest = int(np.diff(split.bounds).max())
    raise text.TextError(f'has held-out blocks of about {longest} tokens, fewer than '
                         f'--L + --T = {L + T}: too small')
  return Prepared(vocab, ids, split, *data, positions)


def fit_models(prep: Prepared, ridges, smoothing, progress=lambda msg: None):
  """Fit the three CCMCs and the bigram chain; every hyper-parameter by validation NLL.

  Returns:
    (fit columns (one row per model), {model: log P}, the bigram chain's log matrix, a dict of
    the choices and validation grids).
  """
  V = len(prep.vocab)
  tr, va, he = prep.train, prep.validation, prep.heldout
  fits, val_mle = {}, []
  for r in ridges:
    start = time.time()
    A = np.asarray(sparse_fit.fit_mle(tr.prompts, tr.answers, V, ridge=r).A_hat, np.float32)
    fits[r] = A
    val_mle.append(text.heldout_nll(A, va))
    progress(f'MLE ridge {r:g}: validation NLL {val_mle[-1]:.4f} ({time.time() - start:.1f} s)')
  ridge = ridges[int(np.nanargmin(val_mle))]
  C = text.bigram_counts(prep.ids, prep.split.blocks(0), V)
  bigram = {a: text.bigram_log_matrix(C, a) for a in smoothing}
  val_bp = [text.heldout_nll(bigram[a], va) for a in smoothing]
  val_chain = [text.bigram_nll(bigram[a], prep.ids, prep.split.blocks(1)) for a in smoothing]
  alpha = smoothing[int(np.nanargmin(val_bp))]
  alpha_chain = smoothing[int(np.nanargmin(val_chain))]
  log_P = {'mle': jax.nn.log_softmax(fits[ridge], -1),
           'uniform_P': np.zeros((V, V), np.float32), 'bigram_P': bigram[alpha]}
  grid = lambda xs: ';'.join(f'{x:.6g}' for x in xs)
  cols = {k: [] for k in ('model', 'heldout_nll', 'validation_nll', 'n_train', 'n_validation',
                          'n_heldout', 'copy_fraction', 'train_copy_fraction', 'ridge',
                          'ridge_grid', 'validation_nll_grid', 'smoothing')}
  for model in MODELS:
    grid_x, grid_y = {'mle': (ridges, val_mle), 'bigram_P': (smoothing, val_bp)}.get(
        model, ([], []))
    row = {'model': model, 'heldout_nll': text.heldout_nll(log_P[model], he),
           'validation_nll': text.heldout_nll(log_P[model], va), 'n_train': len(tr.answers),
           'n_validation': len(va.answers), 'n_heldout': len(he.answers),
           'copy_fraction': he.copy_fraction, 'train_copy_fraction': tr.copy_fraction,
           'ridge': ridge if model == 'mle' else np.nan, 'ridge_grid': grid(grid_x),
           'validation_nll_grid': grid(grid_y),
           'smoothing': alpha if model == 'bigram_P' else np.nan}
    for k, v in row.items():
      cols[k].append(v)
  choices = {'ridge': ridge, 'ridge_grid': list(ridges), 'validation_nll_by_ridge': val_mle,
             'bigram_P_smoothing': alpha, 'bigram_chain_smoothing': alpha_chain,
             'smoothing_grid': list(smoothing), 'validation_nll_bigram_P': val_bp,
             'validation_nll_bigram_chain_per_token': val_chain}
  return cols, log_P, bigram[alpha_chain], choices


def generate(key, prep: Prepared, log_P_mle, log_B, L, T):
  """(source -> (N, T) tokens): the fitted CCMC with growing and windowed context, the bigram
  chain from each prompt's last token, and the real continuation."""
  pos = prep.positions
  X = np.stack([prep.ids[p - L:p] for p in pos])
  k_grow, k_win, k_bi = (jax.random.fold_in(key, i) for i in range(3))
  out = {'ccmc': text.generate_ccmc(k_grow, log_P_mle, X, T),
         'ccmc_window': text.generate_ccmc(k_win, log_P_mle, X, T, window=L),
         'bigram': text.generate_markov(k_bi, log_B, X[:, -1], T),
         'corpus': np.stack([prep.ids[p:p + T] for p in pos])}
  return {s: np.asarray(v, np.int64) for s, v in out.items()}, X


def measure(prep: Prepared, tokens: dict, X, sources=SOURCES):
  """Per (source, prompt) metrics and sample texts; per (source, t) running top-1 share
  (mean and 10 % / 90 % quantiles over prompts), for each of ``sources`` (keys of
  ``tokens``)."""
  V = len(prep.vocab)
  rows = {k: [] for k in ('source', 'prompt', 'position', 'seq_rep_4', 'distinct_1',
                          'distinct_2', 'top1_share', 'top5_share', 'distinct_last')}
  rows.update(prompt_end=[], first_words=[])
  curves = {k: [] for k in ('source', 't', 'top1_mean', 'top1_q10', 'top1_q90')}
  for source in sources:
    toks = tokens[source]
    N, T = toks.shape
    m = text.repetition_metrics(toks, V, LAST)
    rows['source'] += [source] * N
    rows['prompt'] += list(range(N))
    rows['position'] += list(prep.positions)
    for k, v in m.items():
      rows[k] += list(v)
    rows['prompt_end'] += [text.detokenize(x[-PROMPT_WORDS:], prep.vocab) for x in X]
    rows['first_words'] += [text.detokenize(t[:WORDS], prep.vocab) for t in toks]
    share = text.running_top1_share(toks, V)
    curves['source'] += [source] * T
    curves['t'] += list(range(1, T + 1))
    curves['top1_mean'] += list(share.mean(0))
    curves['top1_q10'] += list(np.quantile(share, 0.1, axis=0))
    curves['top1_q90'] += list(np.quantile(share, 0.9, axis=0))
  return rows, curves


def summary(text_cols, fit_cols) -> dict:
  """The must-show numbers: NLLs per model, mean seq-rep-4 per source and the ratios."""
  nll = dict(zip(fit_cols['model'], fit_cols['heldout_nll']))
  src = np.asarray(text_cols['source'])
  rep = {s: float(np.mean(np.asarray(text_cols['seq_rep_4'])[src == s])) for s in SOURCES}
  ratio = lambda a, b: rep[a] / rep[b] if rep[b] > 0 else float('inf')
  out = {'heldout_nll': nll, 'mean_seq_rep_4': rep,
         'ccmc_over_corpus_seq_rep_4': ratio('ccmc', 'corpus'),
         'ccmc_over_bigram_seq_rep_4': ratio('ccmc', 'bigram'),
         'copy_fraction': fit_cols['copy_fraction'][0]}
  out['mle_below_both_baselines'] = bool(nll['mle'] < min(nll['uniform_P'], nll['bigram_P']))
  out['ccmc_seq_rep_4_at_least_3x'] = bool(min(out['ccmc_over_corpus_seq_rep_4'],
                                              out['ccmc_over_bigram_seq_rep_4']) >= 3)
  return out


def run(corpus_text, *, K, L, T, prompts, ridges, smoothing, seed,
        progress=lambda msg: None) -> dict:
  """The whole experiment on one corpus.

  Returns:
    dict with ``text`` (columns of real_text.csv), ``fit`` (real_text_fit.csv), ``curves``
    (real_text_curves.csv), ``choices`` (ridge / smoothing grids and picks), ``summary``
    (the must-show numbers), ``sizes`` (tokens per split, vocabulary, unknown-token rate).
  """
  prep = prepare(corpus_text, K, L, T, prompts, seed)
  sizes = {'tokens': int(len(prep.ids)), 'V': len(prep.vocab),
           'unk_rate': float(np.mean(prep.ids == len(prep.vocab) - 1))}
  for r, name in enumerate(text.SPLITS):
    sizes[f'{name}_tokens'] = int(sum(e - s for s, e in prep.split.blocks(r)))
  progress(f'{sizes["tokens"]} tokens, V = K + 1 = {sizes["V"]}, copy events: '
           f'{len(prep.train.answers)} train ({prep.train.copy_fraction:.3f} of samples), '
           f'{len(prep.validation.answers)} validation, {len(prep.heldout.answers)} held-out')
  fit_cols, log_P, log_B, choices = fit_models(prep, list(ridges), list(smoothing), progress)
  progress('held-out NLL per copy event: ' + ', '.join(
      f'{m} {v:.4f}' for m, v in zip(fit_cols['model'], fit_cols['heldout_nll'])))
  tokens, X = generate(jax.random.PRNGKey(seed), prep, log_P['mle'], log_B, L, T)
  text_cols, curves = measure(prep, tokens, X)
  return {'text': text_cols, 'fit': fit_cols, 'curves': curves, 'choices': choices,
          'summary': summary(text_cols, fit_cols), 'sizes': sizes}
