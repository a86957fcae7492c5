"""bench/gain.py: the GRPO-over-SFT gain per run and pooled over runs, checked on hand-computed numbers."""

from __future__ import annotations

import json
import math

import pytest

from memrl.bench import gain


def _summary(sft: float, sft_se: float, grpo: float, grpo_se: float) -> dict:
    return {"evals": {"after_sft": {"em": sft, "em_stderr": sft_se, "episodes": 100},
                      "after_grpo": {"em": grpo, "em_stderr": grpo_se, "episodes": 100}},
            "timings": {"sft": 60.0, "grpo": 540.0}, "steps": 4}


def test_run_gain_and_verdict_on_a_hand_example():
    r = gain.run_gain(_summary(0.10, 0.03, 0.25, 0.04))
    assert r["gain"] == pytest.approx(0.15) and r["se"] == pytest.approx(0.05)  # sqrt(0.03^2 + 0.04^2)
    assert r["significant"] and r["tasks"] == 100 and r["seconds"] == 600.0
    assert not gain.run_gain(_summary(0.10, 0.03, 0.19, 0.04))["significant"]  # 0.09 < 2 x 0.05


def test_gain_is_paired_over_tasks_when_both_evals_kept_per_episode_em():
    summary = _summary(0.5, 0.29, 0.75, 0.25)
    summary["evals"]["after_sft"]["em_per_episode"] = [0.0, 1.0, 0.0, 1.0]
    summary["evals"]["after_grpo"]["em_per_episode"] = [1.0, 1.0, 0.0, 1.0]
    # differences 1, 0, 0, 0: mean 0.25, s.d. sqrt((0.75^2 + 3 x 0.25^2) / 3) = 0.5, s.e. 0.5 / sqrt(4)
    r = gain.run_gain(summary)
    assert r["paired"] and r["gain"] == pytest.approx(0.25) and r["se"] == pytest.approx(0.25)
    assert "| +0.250 | 0.250 (paired) | no |" in gain.table(["run"], [r])[2]
    summary["evals"]["after_grpo"]["em_per_episode"] = [1.0, 1.0, 0.0]  # other tasks: no pairing
    r = gain.run_gain(summary)
    assert not r["paired"] and r["se"] == pytest.approx(math.hypot(0.29, 0.25))


def test_pooled_gain_over_runs():
    rows = [gain.run_gain(_summary(0.1, 0.03, 0.1 + g, 0.04)) for g in (0.10, 0.15, 0.20)]
    p = gain.pooled(rows)
    assert p["gain"] == pytest.approx(0.15)
    # one run's s.e. (0.05: the runs share their held-out tasks) plus the seed spread of the mean (0.05 / sqrt 3)
    assert p["se"] == pytest.approx(math.sqrt(0.05 ** 2 + 0.05 ** 2 / 3))
    assert p["between_run_sd"] == pytest.approx(0.05)  # s.d. of 0.10, 0.15, 0.20
    assert p["significant"] and not p["all_significant"]  # run 1 (0.10) is not above 2 x 0.05
    assert gain.pooled(rows[:1])["se"] == pytest.approx(rows[0]["se"])  # one run: its own combined s.e.
    close = [gain.run_gain(_summary(0.1, 0.03, 0.1 + g, 0.04)) for g in (0.05, 0.06, 0.07)]
    assert not gain.pooled(close)["significant"]  # 0.06 < 2 x sqrt(0.05^2 + 0.01^2 / 3): no shrinking with runs


def test_cli_prints_the_table_and_plots_the_reward_curves(tmp_path, capsys):
    runs = []
    for seed, g in enumerate((0.12, 0.2)):
        run = tmp_path / f"gain-s{seed}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps(_summary(0.1, 0.03, 0.1 + g, 0.03)))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"phase": "grpo", "step": i, "reward_mean": 0.1 * i})
                                                   + "\n" for i in range(4)))
        runs.append(str(run))
    (tmp_path / "gain-s0" / "step2").mkdir()
    (tmp_path / "gain-s0" / "step2" / "summary.json").write_text(json.dumps([{"em": 0.16, "em_stderr": 0.03}]))
    assert gain.rewards(tmp_path / "gain-s0") == pytest.approx([0.0, 0.1, 0.2, 0.3])
    summary = json.loads((tmp_path / "gain-s0" / "summary.json").read_text())
    assert gain.heldout_curve(tmp_path / "gain-s0", summary) == [(0, 0.1, 0.03), (2, 0.16, 0.03), (4, 0.22, 0.03)]
    lines = gain.main([*runs, "--plot", str(tmp_path / "curves.png")])
    out = capsys.readouterr().out
    assert "| gain-s0 | 100 | 0.100 ± 0.030 | 0.220 ± 0.030 | +0.120 | 0.042 | yes |" in out
    pooled_row = next(x for x in lines if x.startswith("| pooled (2 runs) |"))
    assert "+0.160" in pooled_row
    assert "| gain-s0 | 0.100 ± 0.030 | 0.160 ± 0.030 | 0.220 ± 0.030 |" in out  # held-out EM at steps 0, 2, 4
    assert "| gain-s1 | 0.100 ± 0.030 | - | 0.300 ± 0.030 |" in out
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_heldout_points_in_step_order_with_the_runs_own_mid_grpo_evals(tmp_path):
    from memrl.rl.report import heldout_points, phases

    evals = {"after_grpo": {"em": 0.3, "em_stderr": 0.04}, "step_10": {"em": 0.25, "em_stderr": 0.04},
             "zero_shot": {"em": 0.0, "em_stderr": 0.0}, "step_4": {"em": 0.2, "em_stderr": 0.03},
             "after_sft": {"em": 0.1, "em_stderr": 0.03}, "sweep": []}
    assert [(k, step) for k, _, step in phases(evals, 12)] == [
        ("zero_shot", None), ("after_sft", 0), ("step_4", 4), ("step_10", 10), ("after_grpo", 12)]  # 4 before 10
    assert heldout_points(evals, 12) == [(0, 0.1, 0.03), (4, 0.2, 0.03), (10, 0.25, 0.04), (12, 0.3, 0.04)]
    run = tmp_path / "run"
    (run / "step7").mkdir(parents=True)  # a mid-run checkpoint evaluated afterwards (memrl eval)
    (run / "step7" / "summary.json").write_text(json.dumps([{"em": 0.22, "em_stderr": 0.03}]))
    curve = gain.heldout_curve(run, {"evals": evals, "steps": 12})
    assert [p[0] for p in curve] == [0, 4, 7, 10, 12] and curve[2] == (7, 0.22, 0.03)


def test_the_rl_control_is_paired_with_sft_and_with_grpo_on_a_hand_example():
    summary = _summary(0.25, 0.25, 0.75, 0.25)
    ev = summary["evals"]
    ev["after_sft"]["em_per_episode"] = [0.0, 1.0, 0.0, 0.0]
    ev["after_grpo"]["em_per_episode"] = [1.0, 1.0, 0.0, 1.0]
    ev["control"] = {"em": 0.5, "em_stderr": 0.29, "episodes": 4, "optimizer_steps": 14,
                     "em_per_episode": [1.0, 1.0, 0.0, 0.0]}
    ev["answer_prior"] = {"em": 0.0, "em_stderr": 0.0, "guess": "Paris", "train_tasks": 1000}
    r = gain.run_gain(summary)
    # control - SFT: diffs 1, 0, 0, 0 -> mean 0.25, s.e. 0.25; GRPO - control: diffs 0, 0, 0, 1 -> 0.25, 0.25
    assert r["control_gain"] == pytest.approx(0.25) and r["control_se"] == pytest.approx(0.25)
    assert r["rl_gain"] == pytest.approx(0.25) and r["rl_se"] == pytest.approx(0.25)
    assert r["gain"] == pytest.approx(0.5) and r["control_steps"] == 14 and r["prior_em"] == 0.0
    lines = gain.table(["run"], [r])
    row = next(x for x in lines if x.startswith("| run | 0.000 |"))
    assert "0.500 ± 0.290 (14)" in row and "+0.250 ± 0.250 [-0.240, +0.740]" in row
    two = gain.table(["a", "b"], [r, r])
    assert any(x.startswith("| pooled (2 runs) | | 0.500 | +0.250 ± 0.250") for x in two)  # same runs: no spread
