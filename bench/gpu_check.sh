#!/usr/bin/env bash
# The GPU half of memrl's checks, for a GPU machine that has torch and transformers but neither vLLM nor Ray nor
# a network (vLLM and Ray wheels are too large to carry there). Build the wheels on a machine with the CPU install
# (`make gpu-wheels` writes .whl/), bring the checkout with .whl/ to the GPU machine, then:
#
#     bash bench/gpu_check.sh    # gpu.txt, tests_{float32,bfloat16}.log, bench.log in $OUT (default /tmp/memrl-gpu)
#
# 1. installs .whl/ into /tmp/memrl-site (memrl itself, DeepSpeed, pydantic, gymnasium; torch is the machine's);
# 2. runs on CUDA (MEMRL_DEVICE=cuda), with fp32 and then bf16 learner weights, every test of the learner, its
#    losses, packing, prefix sharing, staleness and the SFT -> GRPO handoff, and the HF-backend tests (3 tests of
#    those files need vLLM: they error at setup with "No module named 'vllm'");
# 3. `memrl bench gpu`: the learner vs a plain PyTorch loop on random-init SmolLM2-135M and Qwen2.5-1.5B configs.
set -uo pipefail
OUT=${OUT:-/tmp/memrl-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/memrl-site "${WHEELS:-.whl}"/*.whl \
  || { echo "installing .whl/ failed (run make gpu-wheels where memrl is installed)"; exit 1; }
export PYTHONPATH=/tmp/memrl-site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MEMRL_DEVICE=${MEMRL_DEVICE:-cuda} HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | grep -v '^\[' | tee -a "$OUT/gpu.txt"

# The tests run from a copy outside the checkout, so `memrl` is the installed package (the source tree maps
# memrl.rl to rl/ and so on, which only an install resolves). Twice: fp32 weights on the GPU first (the hand-computed
# losses hold exactly, as on CPU: this pass checks the CUDA code paths), then the bf16 weights the GPU trains with
# (the tests' dtype-aware tolerances, memrl.testing).
TESTS="tests/rl/test_losses.py tests/rl/test_policy_losses.py tests/rl/test_packing.py tests/rl/test_learner.py
  tests/rl/test_learner_packed.py tests/rl/test_staleness.py tests/rl/test_handoff.py tests/rl/test_prefix.py
  tests/agents/test_sampling_seeds.py tests/agents/test_episode_faults.py"
rm -rf /tmp/memrl-tests && mkdir -p /tmp/memrl-tests && cp -r tests pyproject.toml /tmp/memrl-tests/
for dtype in float32 bfloat16; do
  echo "== tests, learner weights in $dtype on $MEMRL_DEVICE =="
  # shellcheck disable=SC2086
  (cd /tmp/memrl-tests && MEMRL_LEARNER_DTYPE=$dtype timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -ra \
    -p no:cacheprovider $TESTS) > "$OUT/tests_$dtype.log" 2>&1
  grep -E "^(FAILED|ERROR) |passed|failed" "$OUT/tests_$dtype.log" | tail -25
done

(cd /tmp/memrl-tests && timeout "${BENCH_TIMEOUT:-300}" python3 -m memrl.bench.gpu "$@") 2>&1 | grep -v "it/s\]" \
  | tee "$OUT/bench.log"
