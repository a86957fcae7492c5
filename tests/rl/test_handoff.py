"""The SFT -> GRPO handoff: GRPO starts with a fresh optimizer and a KL reference equal to its starting policy."""

import pytest
import torch

from memrl.rl.learner import Learner
from memrl.testing import learner_sections, visible_lr, weight_tolerance
from tests.rl.test_learner import _trajs


def _learner(model: str, **kw) -> Learner:
    return Learner(model, **learner_sections(**{"zero_stage": 2, "lr": visible_lr(), **kw}), seed=0)


def _sft(learner: Learner, steps: int = 3) -> None:
    for s in range(steps):
        assert learner.train_step(_trajs(10 + s), sft=True, lr=3e-3)["skipped"] == 0.0


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _bound(weights: dict) -> float:
    """How far two learners' weights may lie apart after the same update from the same stored weights."""
    return weight_tolerance() * max(1.0, max(float(v.abs().max()) for v in weights.values()))


def test_after_reset_the_first_grpo_update_is_a_fresh_optimizers(tmp_path):
    warm = _learner("tiny:0")
    _sft(warm)
    start = warm.state_dict()
    warm.module.save_pretrained(tmp_path / "warm", state_dict=start, safe_serialization=True)
    fresh = _learner(str(tmp_path / "warm"))  # a new engine on the warm-started weights: no optimizer history
    assert _max_diff(fresh.state_dict(), start) == 0.0

    fresh.train_step(_trajs(0))
    want = fresh.state_dict()
    warm.reset_optimizer()
    assert warm.steps == 0
    warm.train_step(_trajs(0))
    got = warm.state_dict()
    assert _max_diff(got, want) <= _bound(want)


def test_without_the_reset_sft_momentum_moves_the_first_grpo_update(tmp_path):
    """The control of the test above: what the reset removes is measurable."""
    warm = _learner("tiny:0")
    _sft(warm)
    start = warm.state_dict()
    warm.module.save_pretrained(tmp_path / "warm", state_dict=start, safe_serialization=True)
    fresh = _learner(str(tmp_path / "warm"))
    fresh.train_step(_trajs(0))
    warm.train_step(_trajs(0))  # no reset: Adam's moments of the SFT steps carry over
    assert _max_diff(warm.state_dict(), fresh.state_dict()) > 4 * _bound(fresh.state_dict())


def test_the_kl_reference_is_the_policy_grpo_starts_from():
    learner = _learner("tiny:0", kl_coef=0.1)
    trajs = _trajs(0)
    assert learner.score(trajs)["kl"] == pytest.approx(0.0, abs=1e-7)  # reference = base = policy before SFT
    _sft(learner)
    drifted = learner.score(trajs)["kl"]
    assert drifted > 1e-4  # the base model is not the warm start
    learner.reset_reference()
    assert learner.score(trajs)["kl"] == pytest.approx(0.0, abs=1e-7)
    ref = learner.ref.state_dict()
    assert all(torch.equal(ref[k].to(v.device), v) for k, v in learner.state_dict().items())


def test_load_reference_reads_a_model_directory(tmp_path):
    learner = _learner("tiny:0", kl_coef=0.1)
    _sft(learner)
    learner.module.save_pretrained(tmp_path / "warm", state_dict=learner.state_dict(), safe_serialization=True)
    learner.load_reference(str(tmp_path / "warm"))
    assert learner.score(_trajs(0))["kl"] == pytest.approx(0.0, abs=1e-7)
