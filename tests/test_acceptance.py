"""The GPU acceptance script (`memrl doctor`, cluster/acceptance.py) runs here with `--device cpu`: the same code,
gloo instead of NCCL, the sleep calls made and vLLM's skipped. It cannot show that a GPU passes; it shows that
the script itself runs, so its first GPU run tests the GPU, not the script."""

import subprocess
import sys

import pytest

from memrl.cluster.acceptance import RECIPES, small_sets
from memrl.recipes.schema import load_recipe


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_grpo_step_overrides_are_valid_for_every_paper_recipe(recipe, tmp_path):
    for device in ("cuda", "cpu"):
        r = load_recipe(recipe, small_sets(tmp_path, device))
        assert (r.train.steps, r.learner.ranks, r.rollout.workers, r.algorithm.group_size) == (1, 1, 1, 2)


def test_an_unknown_check_is_refused():
    from memrl.cli import main

    assert main(["doctor", "--checks", "devices,nccl"]) == 2


@pytest.mark.slow
def test_doctor_runs_its_checks_on_cpu():
    done = subprocess.run([sys.executable, "-m", "memrl.cli", "doctor", "--device", "cpu",
                           "--checks", "devices,transfer,sleep"], capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert done.returncode == 0 and len(lines) == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert lines[0].startswith("PASS devices: CPU run")
    assert lines[1].startswith("PASS transfer: memrl_gloo weight transfer") and "checksum" in lines[1]
    assert lines[2].startswith("PASS sleep: CPU: sleep and wake-up called")
