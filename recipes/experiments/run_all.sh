#!/usr/bin/env bash
# Every run behind docs/RESULTS.md, in order; a step whose output exists under runs/ or docs/results_data/ is
# skipped (delete it from both to redo).
#   bash recipes/experiments/run_all.sh            (about 7 hours on 2 CPU cores: step 0 ~2 h 45 min, step 1
#   ~3 h (9 runs: memsearcher 14-20 min each, mem1 15-32, full context 17-29; the sweep grows with the turns the
#   trained policy takes), steps 2-3 ~45 min, step 4 ~25 min; measured step by step)
# After each step its inputs are archived into docs/results_data/ (committed; runs/ is scratch space that a
# machine reset loses), so a campaign spread over several sittings keeps what finished. Each trained agent's
# real-data evals run right after its training, while its checkpoint is still there.
# then: memrl bench results   (tables + plots from docs/results_data/ -> docs/RESULTS.md)
set -euo pipefail
EPISODES=${EPISODES:-4}         # held-out tasks per (agent, N) point of the untrained sweep (its EM is 0: format)
REAL=${REAL:-16}                # real-data questions per dataset
DATASETS=(musique hotpotqa)     # real multi-hop QA (../shared/data or $MEMRL_DATA_DIR), one objective, 4 turns
declare -A AGENT=([mem1-n2]=mem1 [memsearcher-n2]=memsearcher [full-context-n2]=full_context)
kwargs() { echo "{\"dataset\": \"$1\", \"split\": \"eval\", \"topk\": 2}"; }
archive() { memrl bench results --archive-only; }
have() { [ -f "runs/$1" ] || [ -f "docs/results_data/$1" ]; }

# 0. GRPO vs its SFT warm start (`memrl bench gain runs/gain*`). First, on 100 held-out tasks: experiments/grpo-gain
#    at 14 steps, seeds 0, 1, 2 (~20 min each), each one's step-7 checkpoint on the same tasks, then 7 steps on
#    fresh seeds 3, 4, 5 (~13 min each). Then the recipe as shipped (7 steps, 200 held-out tasks, fixed from those)
#    on fresh seeds 6, 7, 8 (~19 min each).
OLD=(--set train.eval_tasks=100)
for seed in 0 1 2; do
  run=gain-s$seed
  have "$run/summary.json" || memrl train experiments/grpo-gain --set seed=$seed --set name=$run "${OLD[@]}" \
    --set train.steps=14 --resume
  if ! have "$run/step7/summary.json"; then
    memrl export "runs/$run/checkpoints/step_000007" --out "runs/$run/step7-model"
    memrl eval --recipe experiments/grpo-gain --model "runs/$run/step7-model" --agent memsearcher --objectives 2 \
      --episodes 100 --out "runs/$run/step7"
  fi
  archive
done
for seed in 3 4 5; do
  have "gain7-s$seed/summary.json" || memrl train experiments/grpo-gain --set seed=$seed --set name=gain7-s$seed \
    "${OLD[@]}" --resume
  archive
done
for seed in 6 7 8; do
  have "gain200-s$seed/summary.json" || memrl train experiments/grpo-gain --set seed=$seed --set name=gain200-s$seed \
    --resume
  archive
done
# 1. the papers' comparison at equal budget: each agent trained with experiments/grpo-gain's settings (recipes
#    experiments/mem1-n2, memsearcher-n2, full-context-n2 differ only in agent.name) on seeds 0, 1, 2, seed by
#    seed, each run ending with its sweep over N = 1, 2, 4, 8, 16 (32 held-out tasks per N); seed 0's trained
#    agents then on the real data
for seed in 0 1 2; do
  for recipe in memsearcher-n2 mem1-n2 full-context-n2; do
    run=$recipe-s$seed
    have "$run/summary.json" || memrl train "experiments/$recipe" --set seed=$seed --set name=$run --resume
    if [ "$seed" = 0 ]; then
      for ds in "${DATASETS[@]}"; do
        have "$run/$ds/summary.json" || memrl eval --recipe "experiments/$recipe" --model "runs/$run/model" \
          --agent "${AGENT[$recipe]}" --env memrl/SearchQA-v0 --env-kwargs "$(kwargs "$ds")" --max-turns 4 \
          --episodes "$REAL" --out "runs/$run/$ds"
      done
    fi
    archive
    rm -rf "runs/$run/checkpoints"  # a finished run's checkpoints (~3.6 GB) are not read again; its model/ stays
  done
done
# 2. the untrained model, every agent format, the same held-out tasks and budgets
have untrained-sweep/episodes.jsonl || memrl eval --recipe experiments/mem1-n2 --model smollm2-135m-instruct \
  --agent mem1,memsearcher,full_context --objectives 1,2,4,8,16 --episodes "$EPISODES" --out runs/untrained-sweep
# 3. the untrained model on the real data, every agent format
for ds in "${DATASETS[@]}"; do
  have "untrained-$ds/summary.json" || memrl eval --recipe experiments/mem1-n2 --model smollm2-135m-instruct \
    --agent mem1,memsearcher,full_context --env memrl/SearchQA-v0 --env-kwargs "$(kwargs "$ds")" --max-turns 4 \
    --episodes "$REAL" --out "runs/untrained-$ds"
done
archive
# 4. real data: MemSearcher trained on the real train split, evaluated on every eval-split question (~25 min)
have searchqa/summary.json || memrl train experiments/searchqa --resume
archive
