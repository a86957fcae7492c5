#!/usr/bin/env bash
# Every run behind docs/RESULTS.md, in order; a step whose output exists under runs/ or docs/results_data/ is
# skipped (delete it from both to redo).
#   bash recipes/experiments/run_all.sh            (about 5 hours on 2 CPU cores: step 0 ~1 h 15 min, step 1
#   ~3 h (9 runs: memsearcher 14-20 min each, mem1 15-32, full context 17-29; the sweep grows with the turns the
#   trained policy takes), steps 2-3 ~45 min, step 4 ~25 min; measured step by step; step 5 (9 multihop runs)
#   ~6 h more: 35-50 min a run, measured on seed 0 in session 18)
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

# 0. GRPO vs its SFT warm start and vs the RL control, on unseen held-out tasks (`memrl bench gain runs/unseen-gain-s*`):
#    experiments/grpo-gain as shipped (7 steps, 200 held-out tasks, train.control) on seeds 0, 1, 2, each its own task
#    stream (~25 min each). The sets measured before session 13 on overlapping tasks (gain-s*, gain7-s*, gain200-s*)
#    stay archived in docs/results_data/ as SUPERSEDED; their commands are in git history (run_all.sh at 1d7bab0).
for seed in 0 1 2; do
  run=unseen-gain-s$seed
  have "$run/summary.json" || memrl train experiments/grpo-gain --set seed=$seed --set name=$run --resume
  archive
  rm -rf "runs/$run/checkpoints" "runs/$run/handoff"
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
# 5. the papers' comparison where memory is needed (issue 32): experiments/multihop (2-hop objectives, topk 1, a
#    curriculum over N = 1 -> 2 -> 4, summed objectives, the same 8192-token window for all, lr 1e-5 as chosen in
#    step 6) for each agent on seeds 0, 1, 2; each run ends with its sweep at N = 1, 2, 4, 8, 16 on unseen held-out tasks
for seed in 0 1 2; do
  for agent in memsearcher mem1 full_context; do
    run=multihop-$agent-s$seed
    have "$run/summary.json" || memrl train experiments/multihop --set seed=$seed --set name=$run \
      --set agent.name=$agent --resume
    archive
    rm -rf "runs/$run/checkpoints"
  done
done
# 6. the lr tuning of experiments/multihop (session 19, on the TUNING set, no sweep), which chose step 5's lr 1e-5: one
#    SFT warm start (memsearcher, seed 1) and GRPO at lr 1e-4 (the recipe's until then); then GRPO at lr 1e-5 forked
#    from the same after-SFT checkpoint
tune="--set seed=1 --set agent.name=memsearcher --set train.held_out=tune --set train.eval_objectives=[] \
  --set train.keep_checkpoints=10"
have tune-lr1e-4-s1/summary.json || memrl train experiments/multihop $tune --set name=tune-lr1e-4-s1 \
  --set learner.lr=1.0e-4 --resume
if ! have tune-lr1e-5-s1/summary.json; then
  mkdir -p runs/tune-lr1e-5-s1/checkpoints
  [ -d runs/tune-lr1e-5-s1/checkpoints/step_000000 ] || \
    cp -r runs/tune-lr1e-4-s1/checkpoints/step_000000 runs/tune-lr1e-5-s1/checkpoints/
  [ -f runs/tune-lr1e-5-s1/metrics.jsonl ] || \
    grep '"phase": "sft"' runs/tune-lr1e-4-s1/metrics.jsonl > runs/tune-lr1e-5-s1/metrics.jsonl  # the shared SFT
  memrl train experiments/multihop $tune --set name=tune-lr1e-5-s1 --set learner.lr=1.0e-5 --resume
fi
# 7. the one change tried against memsearcher's never-closing memories at large N (session 20, TUNING set, N = 8,
#    16 tasks): a repetition penalty in the greedy eval of seed 0's trained model, 1.0 (off) vs 1.1 vs 1.3
for p in 1.0 1.1 1.3; do
  have reppen-tune/$p/summary.json || memrl eval --recipe experiments/multihop --model runs/multihop-memsearcher-s0/model \
    --agent memsearcher --episodes 16 --held-out tune --objectives 8 --repetition-penalty $p --out runs/reppen-tune/$p
done
# 8. is the absorbing loop (a cut memory written again, byte for byte, turn after turn) a property of greedy decoding?
#    (session 21, TUNING set, N = 8, 8 tasks, mem1 seed 0's trained model): greedy vs sampled at the training
#    temperature 0.7, each episode with its own seed. A diagnostic: every reported eval stays greedy.
for t in 0.0 0.7; do
  have temp-tune/$t/summary.json || memrl eval --recipe experiments/multihop --model runs/multihop-mem1-s0/model \
    --agent mem1 --episodes 8 --held-out tune --objectives 8 --temperature $t --out runs/temp-tune/$t
done
# 9. the warm start never showed a memory of more than 4 questions: does one that also shows N = 8 remove the loop?
#    (session 22, TUNING set, N = 8, 16 tasks, greedy) memsearcher, seed 1, SFT only (40 steps, no GRPO) on oracle
#    episodes of N = 1, 2, 4 (the recipe's) vs N = 1, 2, 4, 8; the two arms differ only in sft.objectives (session 22
#    evaluated step 5's multihop-memsearcher-s1 after-SFT checkpoint as the 1-2-4 arm: the same recipe, seed and SFT)
for ns in 1,2,4 1,2,4,8; do
  d=${ns//,/-}
  have "sft-tune/$d/summary.json" && continue
  have "sft$d-s1/summary.json" || memrl train experiments/multihop --set seed=1 --set agent.name=memsearcher \
    --set name="sft$d-s1" --set "sft.objectives=[$ns]" --set train.steps=0 --set train.held_out=tune \
    --set "train.eval_objectives=[]" --set env.objectives=1 --set train.eval_tasks=1 --set train.sweep_tasks=1 --resume
  memrl eval --recipe experiments/multihop --model "runs/sft$d-s1/model" --agent memsearcher --episodes 16 \
    --held-out tune --objectives 8 --out "runs/sft-tune/$d"
done
