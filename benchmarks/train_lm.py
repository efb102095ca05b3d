"""Benchmark: training throughput of the GPT-2-architecture LM (ccmc_jax.lm) and its model FLOPs
utilisation (MFU) on this machine.

* throughput: tokens/s of the jitted training step (``lm.make_train_step``, compiled before the
  clock starts) for each ``--batches``, on the real-text KJV data and the default model of
  ``experiments.train_lm`` (2 layers, d_model 128, 4 heads, context 64, V = 2001); and the same
  steps inside one ``lax.scan`` (no Python dispatch between steps);
* model FLOPs per token: ``6 N + 12 n_layer T d_model`` (the PaLM / nanoGPT estimate: N = the
  parameters except the position embedding, each used in one multiply-add forward and two
  backward; the second term the attention scores and values at context T);
* peak: the float32 matmul rate of a large ``jnp.dot`` (``--peak_n`` square, best of 5) measured
  in the same run; MFU = achieved model FLOP/s / peak;
* where the time goes (batch 32): forward only; the model's dense matmuls alone at their shapes
  (forward); the attention core (scores, masked softmax, weighted values; forward); the
  embedding gather and its scatter-add gradient.

  python -m benchmarks.train_lm                  # ~2 minutes on 2 CPU cores
  python -m benchmarks.train_lm --quick          # seconds

Writes results/benchmark_train_lm.csv (long format: part, setting, metric, value) and its
.meta.json.
"""
from __future__ import annotations

import os
import time

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)

_BATCHES = flags.DEFINE_list('batches', ['8', '32', '128'], 'Batch sizes timed; each >= 1.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed training steps per batch size; >= 1.')
_PEAK_N = flags.DEFINE_integer('peak_n', 2048, 'Size of the square matmul of the peak; >= 64.')
_CORPUS = flags.DEFINE_enum('bench_corpus', 'kjv', ['kjv', 'python_docs'], 'Training text.')

NAME = 'benchmark_train_lm'
KEYS = ['part', 'setting', 'metric']


def _best(fn, *args, repeats=5):
  """Fastest of ``repeats`` timed calls (after one warm-up call), in seconds."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def peak_flops(n):
  """float32 matmul FLOP/s of an n x n by n x n ``jnp.dot`` (2 n^3 FLOPs)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  return 2 * n ** 3 / _best(jax.jit(jnp.dot), a, a)


def model_flops_per_token(c):
  """``6 N + 12 n_layer T d``, N = parameters except the position embedding (tied lm_head)."""
  from ccmc_jax import gpt2  # pylint: disable=import-outside-toplevel
  N = gpt2.param_count(c) - c.n_positions * c.n_embd
  return 6 * N + 12 * c.n_layer * c.n_positions * c.n_embd, N


def dense_shapes(c):
  """(in, out) of every dense matmul of the forward pass: per layer qkv, attention output, MLP
  in and out; then the tied unembedding."""
  D = c.n_embd
  return [(D, 3 * D), (D, D), (D, c.d_mlp), (c.d_mlp, D)] * c.n_layer + [(D, c.vocab_size)]


def parts(c, params, ids, B):
  """Seconds of the pieces of one batch of B windows (forward unless said)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ccmc_jax import lm  # pylint: disable=import-outside-toplevel
  T, D, H = c.n_positions, c.n_embd, c.n_head
  tokens = jnp.asarray(ids[:B * (T + 1)].reshape(B, T + 1))
  shapes = dense_shapes(c)
  xs = [jax.random.normal(jax.random.PRNGKey(i), (B * T, a), jnp.float32)
        for i, (a, _) in enumerate(shapes)]
  Ws = [jnp.full(s, 0.01, jnp.float32) for s in shapes]

  def matmuls(xs, Ws):  # each at its own (B T, in) x (in, out) shape
    return sum((x @ W).sum() for x, W in zip(xs, Ws))

  q = jax.random.normal(jax.random.PRNGKey(2), (B, T, H, D // H), jnp.float32)
  causal = jnp.tril(jnp.ones((T, T), bool))

  def attention(q):
    s = jnp.einsum('bthd,bshd->bhts', q, q) / np.sqrt(D // H)
    a = jax.nn.softmax(jnp.where(causal, s, -jnp.inf), -1)
    return jnp.einsum('bhts,bshd->bthd', a, q) * c.n_layer

  gather = jax.grad(lambda wte: (wte[tokens[:, :-1]] ** 2).sum())
  return {'forward': _best(jax.jit(lambda p: lm.loss(p, c, tokens)), params),
          'dense_matmuls_forward': _best(jax.jit(matmuls), xs, Ws),
          'attention_core_forward': _best(jax.jit(attention), q),
          'embedding_gather_and_grad': _best(jax.jit(gather), params['wte'])}


def main(_):
  import jax  # pylint: disable=import-outside-toplevel
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io, lm, text, tolerances  # pylint: disable=import-outside-toplevel
  from ccmc_jax.trials import train_lm  # pylint: disable=import-outside-toplevel
  F = flags.FLAGS
  if F.quick:
    for name, value in {'batches': ['8'], 'steps': 3, 'peak_n': 256,
                        'bench_corpus': 'python_docs'}.items():
      if not F[name].present:
        F[name].value = value
  common.check_int('batches', _BATCHES.value, 1, 4096)
  common.check_int('steps', _STEPS.value, 1, 10000)
  common.check_int('peak_n', _PEAK_N.value, 64, 16384)
  common.check_writable_dir('results_dir', F.results_dir)
  common.setup_jax()
  corpus = text.read_kjv() if _CORPUS.value == 'kjv' else text.read_python_docs()
  data = train_lm.prepare(corpus, 2000 if _CORPUS.value == 'kjv' else 200, F.seed, 64)
  c = train_lm.model_config(len(data.vocab), 2, 4, 128, 64)
  per_token, N = model_flops_per_token(c)
  peak = peak_flops(_PEAK_N.value)
  rows = [('machine', f'jnp.dot {_PEAK_N.value}^2 float32', 'peak_flops', peak),
          ('model', 'default', 'parameters_N', N), ('model', 'default', 'flops_per_token', per_token)]
  params = lm.init_params(jax.random.PRNGKey(0), c)
  opt = lm.optimizer(3e-3, 1000, 100)
  starts = lm.window_starts(data.split.blocks(0), c.n_positions + 1)
  key = jax.random.PRNGKey(1)
  for B in [int(b) for b in _BATCHES.value]:
    step = lm.make_train_step(c, opt, data.ids, starts, B)
    state = (params, opt.init(params))
    fn = step.lower(*state, key).compile()
    jax.block_until_ready(fn(*state, key))
    t = time.perf_counter()
    p, o = state
    for s in range(_STEPS.value):
      p, o, _ = fn(p, o, jax.random.fold_in(key, s))
    jax.block_until_ready(p)
    loop = (time.perf_counter() - t) / _STEPS.value

    def scanned(p, o, keys, step=step):
      return jax.lax.scan(lambda po, k: (step(*po, k)[:2], None), (p, o), keys)[0]
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(np.arange(_STEPS.value))
    scan = _best(jax.jit(scanned), params, opt.init(params), keys, repeats=2) / _STEPS.value
    for name, sec in (('python_loop', loop), ('lax_scan', scan)):
      rate = B * c.n_positions / sec
      rows += [('train_step', f'batch={B} {name}', 'seconds_per_step', sec),
               ('train_step', f'batch={B} {name}', 'tokens_per_s', rate),
               ('train_step', f'batch={B} {name}', 'model_flops_per_s', rate * per_token),
               ('train_step', f'batch={B} {name}', 'mfu', rate * per_token / peak)]
    common.progress(f'{NAME}: batch {B}: {B * c.n_positions / loop:,.0f} tokens/s, MFU '
                    f'{B * c.n_positions / loop * per_token / peak:.1%} (scan: '
                    f'{B * c.n_positions / scan * per_token / peak:.1%})')
  B = 32
  flops = {'dense_matmuls_forward': 2 * B * c.n_positions * sum(
      a * b for a, b in dense_shapes(c))}
  for name, sec in parts(c, params, data.ids, B).items():
    rows.append(('parts', f'batch={B}', f'{name}_seconds', sec))
    if name in flops:
      rows.append(('parts', f'batch={B}', f'{name}_flops_per_s', flops[name] / sec))
  df = pd.DataFrame(rows, columns=KEYS + ['value'])
  io.write_csv(df, os.path.join(F.results_dir, f'{NAME}.csv'))
  io.write_meta(os.path.join(F.results_dir, f'{NAME}.meta.json'),
                common.flag_values(['batches', 'steps', 'peak_n', 'bench_corpus']), keys=KEYS,
                tolerances=tolerances.for_table(NAME),
                formula='model FLOPs per token = 6 N + 12 n_layer T d_model (N: parameters '
                        'except wpe; PaLM / nanoGPT estimate_mfu)')
  with pd.option_context('display.width', 200, 'display.max_rows', 200):
    print(df.to_string(index=False, float_format=lambda v: f'{v:.4g}'))


if __name__ == '__main__':
  common.run(main)
