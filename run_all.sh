#!/usr/bin/env bash
# Regenerate every results CSV and figure of the paper (full fidelity, ~minutes on 2 CPU cores).
#   bash run_all.sh            # paper fidelity: results/ and figures/
#   bash run_all.sh --quick    # smoke run with small settings, into results/quick, figures/quick
# Both end with `python -m experiments.claims` (exit 1 when a claim of the paper fails).
# Any further arguments are passed to every experiment (e.g. --seed=1).
set -euo pipefail
cd "$(dirname "$0")"
[ -n "${VIRTUAL_ENV:-}" ] || { [ -d .venv ] && . .venv/bin/activate; } || true
# A usable GPU backend (pip install "jax[cuda12]") is used as JAX picks it; without one, the CPU
# (set JAX_PLATFORMS yourself to choose). Sweeps shard their trials over all local devices.
if [ -z "${JAX_PLATFORMS+x}" ] && ! python -c "import jax; jax.devices('gpu')" >/dev/null 2>&1; then
  export JAX_PLATFORMS=cpu
fi

args=()
quick=0
for a in "$@"; do
  if [ "$a" = "--quick" ]; then quick=1; else args+=("$a"); fi
done
if [ "$quick" = 1 ]; then
  args+=(--quick --results_dir=results/quick --figures_dir=figures/quick)
fi

experiments=(
  ccmc_example
  attention_equivalence
  sample_complexity
  self_vs_cross
  positional_encoding
  collapse
  collapse_statistics
  vocabulary_scaling
  trajectory_learning
  train_lm
  gpt2_repetition
  real_text
  attention_training
  # The trained LM beside the CCMC: they read <results_dir>/train_lm, so they run after the
  # training step (experiments.train_lm) and exit 2 with one line when its folder is missing.
  lm_repetition
  lm_distillation
)
results_dir=results
for a in "${args[@]}"; do
  case "$a" in --results_dir=*) results_dir="${a#--results_dir=}" ;; esac
done
total_start=$(date +%s)
for name in "${experiments[@]}"; do
  extra=()
  # The paper-fidelity sample-complexity run adds the prompt-length sweep (K = 10, L = 5, 10, 20).
  if [ "$name" = sample_complexity ] && [ "$quick" = 0 ]; then extra+=(--L_sweep=5,20); fi
  # The LM of Fig. 5 (left) is trained here, or kept when its training.json says the same flags
  # and code made it (--reuse); the repetition panel then decodes it greedily from a held-out
  # prompt (word ids) that the training recorded.
  if [ "$name" = train_lm ]; then extra+=(--reuse); fi
  if [ "$name" = gpt2_repetition ]; then
    model="$results_dir/train_lm"
    mapfile -t rep < <(python -c 'import json, sys; s = json.load(open(sys.argv[1]))
print("--prompt_ids=" + ",".join(map(str, s["repetition_prompt_ids"])))
print("--steps=%d" % s["repetition_steps"])' "$model/training.json")
    extra+=(--hf_model_dir="$model" "${rep[@]}")
  fi
  start=$(date +%s)
  echo "== $name" >&2
  python -m "experiments.$name" "${args[@]}" "${extra[@]}"
  echo "== $name took $(( $(date +%s) - start )) s" >&2
done
echo "== all experiments took $(( $(date +%s) - total_start )) s" >&2
# Check every claim on the new CSVs (exit 1 when one fails); the full run refreshes the claims
# table of docs/claims.md and the counts line of the README.
echo "== claims" >&2
if [ "$quick" = 1 ]; then
  python -m experiments.claims --quick --results_dir="$results_dir"
elif [ "$results_dir" = results ]; then
  python -m experiments.claims --readme=README.md --readme=docs/claims.md
else
  python -m experiments.claims --results_dir="$results_dir"
fi
if [ "$quick" = 0 ]; then  # results/ was rewritten in place: the reference is the committed one
  echo "== does it agree with the committed reference? python -m ccmc_jax.compare --reference $results_dir" >&2
fi
