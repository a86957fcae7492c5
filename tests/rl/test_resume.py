"""Kill -9 during training, resume, and no step is lost or repeated; broken checkpoints are skipped."""

import json
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from memrl.rl import checkpoint

STEPS = 5  # killed once its step-2 checkpoint is written: mid-run, with steps before and after the kill
SETS = [
    "name=resume", "model.name=tiny:0", "env.id=memrl.testing:LettersEnv", "env.objectives=1", "env.kwargs={}",
    "agent.memory_tokens=16", "rollout.max_tokens=8", "rollout.max_model_len=1024", "algorithm.group_size=2",
    "algorithm.tasks_per_step=2", "learner.lr=1e-3", "train.eval_tasks=2", f"train.steps={STEPS}",
    "train.checkpoint_every=1", "train.keep_checkpoints=3", "train.baseline_agent=null", "train.eval_objectives=[]",
    "sft.steps=0", "resources.num_cpus=2", "logging.progress=false",
    "train.eval_every=0", "train.control=false",
]


def _train(out: Path, *extra: str) -> subprocess.Popen:
    memrl = Path(sys.executable).parent / "memrl"
    args = [str(memrl), "train", "quickstart", *[a for s in [*SETS, f"output_dir={out}"] for a in ("--set", s)],
            *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _orphan_engines() -> set[int]:
    """vLLM engine processes whose parent died (SIGKILL of their owner orphans them: vendor behaviour)."""
    import psutil

    found = set()
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if p.info["ppid"] == 1 and any("EngineCore" in c for c in p.info["cmdline"] or []):
            found.add(p.info["pid"])
    return found


@pytest.fixture
def new_orphan_engines():
    """A function listing orphaned engines that appeared during the test; any left at the end are killed
    (~1 GB each) so that a failure here does not outlive the suite."""
    before = _orphan_engines()
    yield lambda: _orphan_engines() - before
    for pid in _orphan_engines() - before:
        os.kill(pid, signal.SIGKILL)


def _step(ckpt: Path | None) -> int:
    """The step of a checkpoint directory (`step_000004` -> 4; -1 for none yet)."""
    return -1 if ckpt is None else int(ckpt.name.split("_")[-1])


@pytest.mark.slow
def test_kill_9_then_resume_loses_and_repeats_no_step(tmp_path, new_orphan_engines):
    out = tmp_path / "run"
    proc = _train(out)
    deadline = time.time() + 600
    while _step(checkpoint.latest(out / "checkpoints")) < 2:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint at step 2 within 10 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-run
    proc.wait()
    killed_at = checkpoint.latest(out / "checkpoints")
    assert 2 <= _step(killed_at) < STEPS, killed_at
    killed_timings = torch.load(killed_at / "trainer_state.pt", weights_only=False)["timings"]
    assert killed_timings["grpo"] > 0  # a checkpoint written mid-GRPO holds the GRPO time up to it
    resumed = _train(out, "--resume")
    log, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, log
    assert f"resumed from {killed_at}" in log, log[-5000:]
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["phase"] == "grpo"]
    assert [r["step"] for r in rows] == list(range(STEPS))
    versions = [r["weight_version"] for r in rows]  # the resumed run goes on counting, never reuses a version
    assert all(a < b for a, b in pairwise(versions)), versions
    summary = json.loads((out / "summary.json").read_text())  # the resumed steps' time adds to the killed run's
    assert summary["timings_exclusive"] and summary["timings"]["grpo"] > killed_timings["grpo"], summary["timings"]
    assert not new_orphan_engines(), "the SIGKILLed run left its vLLM EngineCore running"


def test_truncated_and_unfinished_checkpoints_are_skipped(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    good, bad, unfinished = root / "step_000002", root / "step_000004", root / "step_000006"
    for d in (good, bad, unfinished):
        d.mkdir(parents=True)
        (d / "trainer_state.pt").write_bytes(b"x" * 100)
    checkpoint._write_manifest(good, [])
    checkpoint._write_manifest(bad, [])
    (bad / "trainer_state.pt").write_bytes(b"x" * 10)  # truncated after the manifest was written
    assert checkpoint.latest(root) == good
    assert "truncated" in caplog.text and "interrupted while writing" in caplog.text
    with pytest.raises(ValueError, match="not usable"):
        checkpoint.load(bad, learner=None)


class _RankOnAnotherDisk:
    """A learner whose rank 1 wrote its shard where the driver cannot see it (a node whose output_dir is its own
    disk: `check_storage` refuses such a run at start, so the fault is staged here, not caused)."""

    def save_state(self, out):
        (out / "engine").mkdir(parents=True)
        (out / "engine" / "zero_pp_rank_0_optim_states.pt").write_bytes(b"0" * 10)
        return [("10.0.0.1", ["engine/zero_pp_rank_0_optim_states.pt"]),
                ("10.0.0.2", ["engine/zero_pp_rank_1_optim_states.pt"])]


def test_a_checkpoint_missing_a_ranks_files_is_an_error_not_an_intact_looking_directory(tmp_path):
    root = tmp_path / "checkpoints"
    with pytest.raises(checkpoint.CheckpointError, match=r"learner rank 1 \(node 10.0.0.2\) wrote "
                                                         r"engine/zero_pp_rank_1_optim_states.pt"):
        checkpoint.save(root, 4, _RankOnAnotherDisk(), {"cursor": 0})
    assert not (root / "step_000004").exists() and checkpoint.latest(root) is None


def test_the_manifest_covers_every_ranks_files(tmp_path):
    class Shared(_RankOnAnotherDisk):
        def save_state(self, out):
            views = super().save_state(out)
            (out / "engine" / "zero_pp_rank_1_optim_states.pt").write_bytes(b"1" * 12)  # shared storage: seen
            return views

    path = checkpoint.save(tmp_path, 2, Shared(), {"cursor": 0})
    manifest = json.loads((path / checkpoint.MANIFEST).read_text())
    assert manifest["engine/zero_pp_rank_1_optim_states.pt"] == 12 and "trainer_state.pt" in manifest
    assert checkpoint.verify(path) is None


def test_a_rank_reports_its_finished_files_not_another_ranks_write_in_progress(tmp_path):
    """Rank 1 lists the checkpoint while rank 0 still writes its weights through a hidden temp file (seen in the
    multi-node test): the temp file is gone when the driver writes the manifest, so it must not be reported."""
    from memrl.rl.learner_state import _files

    (tmp_path / "engine").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "engine" / "zero_pp_rank_1_optim_states.pt").write_bytes(b"1")
    (tmp_path / "model" / ".tmpX3Q4ZG").write_bytes(b"partial")
    assert _files(tmp_path) == ["engine/zero_pp_rank_1_optim_states.pt"]
