"""docs/RESULTS.md builder: bootstrap intervals, EM slopes, verdicts and plots from run folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from memrl.agents.evaluate import bootstrap_ci
from memrl.bench import results


def test_bootstrap_ci_brackets_the_mean_and_collapses_for_constant_data():
    lo, hi = bootstrap_ci([0.0, 1.0] * 50, resamples=500)
    assert lo < 0.5 < hi and hi - lo < 0.25
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    assert bootstrap_ci([0.3]) == (0.3, 0.3)


def test_slope_of_mean_em_vs_n_matches_least_squares():
    by_n = {1: [0.8, 0.8], 2: [0.6, 0.6], 4: [0.2, 0.2]}  # means 0.8, 0.6, 0.2 at N = 1, 2, 4
    est, lo, hi = results.slope_ci([by_n], min_n=1)
    x, y = np.array([1, 2, 4.0]), np.array([0.8, 0.6, 0.2])
    expected = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()  # -0.2
    assert est == pytest.approx(expected) == pytest.approx(-0.2)
    assert lo == pytest.approx(est) and hi == pytest.approx(est)  # no spread within N
    assert results.slope_ci([by_n])[0] == pytest.approx(-0.2)  # by default N = 1 is left out: (0.2 - 0.6) / 2
    flat = {1: [0.0], 2: [0.5], 4: [0.5]}  # N = 1 impossible (turn budget): no slope from N = 2 on
    assert results.slope_ci([flat])[0] == pytest.approx(0.0) and results.slope_ci([flat], min_n=1)[0] > 0.1


def test_slope_pooled_over_runs_averages_their_means_and_spreads_with_them():
    runs = [{1: [0.8] * 4, 4: [0.2] * 4}, {1: [0.6] * 4, 4: [0.3] * 4}]  # slopes -0.2 and -0.1: mean means -0.15
    est, lo, hi = results.slope_ci(runs, min_n=1)
    assert est == pytest.approx(-0.15)
    assert lo == pytest.approx(-0.2) and hi == pytest.approx(-0.1)  # only the runs vary: their range


def test_nested_ci_draws_seeds_then_episodes():
    assert results.nested_ci([[0.0, 1.0] * 20]) == bootstrap_ci([0.0, 1.0] * 20, resamples=results.RESAMPLES)
    lo, hi = results.nested_ci([[0.2] * 10, [0.4] * 10, [0.6] * 10])  # no spread within a seed
    assert 0.2 <= lo < 0.4 < hi <= 0.6
    one = results.nested_ci([[0.0, 1.0] * 20] * 3)  # identical seeds: no wider than one seed's interval
    alone = bootstrap_ci([0.0, 1.0] * 20)
    assert one[1] - one[0] <= alone[1] - alone[0] + 1e-9


def test_kv_bytes_per_token_of_the_tiny_model(tiny_dir):
    import torch

    from memrl.models import kv_bytes_per_token

    assert kv_bytes_per_token(tiny_dir, torch.float32) == 2 * 2 * 2 * 64 * 4  # K+V, 2 layers, 2 KV heads, fp32


def _episodes(agent: str, n: int, em: float, peak: int, k: int = 40) -> list[dict]:
    hits = round(em * k)
    return [{"agent": agent, "objectives": n, "em": float(i < hits), "f1": float(i < hits),
             "peak_context_tokens": peak, "terminated": True, "episode_seconds": 1.0} for i in range(k)]


def _write_runs(root, seeds: int = 1):
    """`seeds` finished runs per agent; seed k's EM is 0.05 k above seed 0's at every N."""
    ns = [1, 2, 4, 8, 16]
    shapes = {"mem1": (lambda n: 0.5 - 0.01 * n, lambda n: 300),
              "memsearcher": (lambda n: 0.5 - 0.01 * n, lambda n: 320),
              "full_context": (lambda n: 0.75 - 0.05 * n if n < 16 else 0.0, lambda n: 200 * n)}
    for agent, (em, peak) in shapes.items():
        for k, name in enumerate(results.RUNS[agent][:seeds]):
            run = root / name
            run.mkdir(parents=True)
            rows = [e for n in ns for e in _episodes(agent, n, em(n) + 0.05 * k * (em(n) > 0), peak(n))]
            (run / "sweep_episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run / "summary.json").write_text(json.dumps({
                "evals": {"after_sft": {"em": 0.2, "em_stderr": 0.05, "episodes": 64},
                          "after_grpo": {"em": 0.3 + 0.05 * k, "em_stderr": 0.05, "episodes": 64}},
                "timings": {"sft": 100.0, "grpo": 200.0, "eval_sweep": 50.0}}))
    (root / "untrained-sweep").mkdir()
    (root / "untrained-sweep" / "episodes.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for a in results.RUNS for n in ns for r in _episodes(a, n, 0.0, 100 * n)))
    (root / "untrained-musique").mkdir()
    (root / "untrained-musique" / "summary.json").write_text(json.dumps([
        {"agent": "mem1", "episodes": 8, "em": 0.0, "em_stderr": 0.0, "f1": 0.1, "answered_rate": 0.5,
         "peak_context_tokens": 400}]))


def test_results_page_has_tables_verdicts_and_plots(tmp_path):
    _write_runs(tmp_path / "runs")
    path = results.write(results.collect(tmp_path / "runs", 1024), tmp_path / "docs", 1024)
    text = path.read_text()
    assert "**H1, peak context flat in N for memory agents, growing for full context: CONFIRMED.**" in text
    assert "mem1 1.00x (300 -> 300)" in text and "full_context (trained) 16.00x (200 -> 3200)" in text
    assert "lose less EM per added objective than full context: CONFIRMED" in text
    assert "H3, training at N = 2 generalizes to N = 16: CONFIRMED for mem1, memsearcher**" in text
    assert "| full_context (trained) | 16 | 1 | 40 | 0.000 [0.000, 0.000] | s0 0.000 [0.000, 0.000] |" in text
    assert "| untrained mem1 | 4 | - | 40 |" in text and "| musique | untrained mem1 | 8 |" in text
    assert "| mem1-n2-s0 | 64 | 0.200 ± 0.050 | 0.300 ± 0.050 | +0.100 | 0.071 | no |" in text
    for png in ("results_em_vs_n.png", "results_peak_tokens_vs_n.png"):
        assert (tmp_path / "docs" / png).stat().st_size > 5000


def test_results_page_pools_three_seeds_per_agent(tmp_path):
    _write_runs(tmp_path / "runs", seeds=3)
    (tmp_path / "runs" / "memsearcher-n2-s2" / "summary.json").unlink()  # still running: not counted yet
    data = results.collect(tmp_path / "runs", 1024)
    mem1 = data["curves"]["mem1 (trained)"][2]
    assert mem1["runs"] == 3 and mem1["episodes"] == 120
    assert mem1["em"] == pytest.approx(np.mean([0.48, 0.53, 0.58]), abs=0.01)
    lo, hi = mem1["em_ci"]
    assert lo < 0.48 + 0.02 and hi > 0.58 - 0.02  # seed spread inside the pooled interval
    assert data["curves"]["memsearcher (trained)"][2]["runs"] == 2
    text = results.write(data, tmp_path / "docs", 1024).read_text()
    assert "| mem1 (trained) | 2 | 3 | 120 |" in text and "s0 0.475 [" in text and "; s2 0.575 [" in text
    assert "pooled over mem1 3 seeds, memsearcher 2 seeds, full_context 3 seeds" in text
    assert "| pooled (3 runs) | | 0.200 | 0.350 | +0.150 |" in text  # mem1's GRPO gain over its seeds


def test_h2_verdict_separates_significant_from_point_estimate_differences():
    fc = (-0.04, -0.05, -0.03)
    assert results.h2_word({"full_context": fc, "mem1": (-0.01, -0.02, -0.00)}, ["mem1"]) == "CONFIRMED"
    assert results.h2_word({"full_context": fc, "mem1": (-0.03, -0.045, -0.02)}, ["mem1"]).startswith("NOT SHOWN")
    assert results.h2_word({"full_context": fc, "mem1": (-0.08, -0.09, -0.07)}, ["mem1"]) == "REFUTED"
    both = results.h2_word({"full_context": fc, "mem1": (-0.04, -0.05, -0.03), "memsearcher": (-0.08, -0.09, -0.07)},
                           ["mem1", "memsearcher"])
    assert both == "MIXED: NOT SHOWN for mem1, REFUTED for memsearcher"  # mem1's overlap decides nothing for mem1
    tie = results.h2_word({"full_context": fc, "mem1": (-0.04, -0.05, -0.03), "memsearcher": (-0.03, -0.045, -0.02)},
                          ["mem1", "memsearcher"])
    assert tie == "NOT SHOWN (the intervals overlap)"
    worse = results.h2_word({"full_context": fc, "mem1": (-0.045, -0.06, -0.035)}, ["mem1"])
    assert worse.startswith("NOT SHOWN")  # steeper point estimate, overlapping interval: not a refutation
    assert results.separate((-0.08, -0.09, -0.07), fc) and results.separate((-0.01, -0.02, -0.00), fc)
    assert not results.separate((-0.03, -0.045, -0.02), fc)


def test_h2_warns_when_full_context_slope_is_at_the_floor():
    floor = {1: {"em": 0.3}, 2: {"em": 0.0}, 4: {"em": 0.005}, 16: {"em": 0.0}}
    assert "at the floor" in results.floor_caveat(floor)  # N = 1 is outside the fit and may score
    assert results.floor_caveat({**floor, 4: {"em": 0.05}}) == ""


def test_h3_needs_as_many_objectives_right_at_16_as_at_2():
    def curve(em2, em16, lo16):
        return {2: {"em_sum": 2 * em2}, 16: {"em_sum": 16 * em16, "em_ci": (lo16, em16 + 0.01)}}

    assert results.h3_word({"mem1": curve(0.2, 0.03, 0.01)}, 16) == "CONFIRMED for mem1"  # 0.48 >= 0.40 right
    below = results.h3_word({"mem1": curve(0.2, 0.01, 0.002), "memsearcher": curve(0.2, 0.0, 0.0)}, 16)
    assert below.startswith("REFUTED (above 0") and below.endswith(": mem1)")  # 0.16 < 0.40 objectives right
    assert results.h3_word({"mem1": curve(0.2, 0.0, 0.0)}, 16) == "REFUTED"


def test_results_page_without_runs_says_so(tmp_path):
    text = results.write(results.collect(tmp_path / "nothing", 1024), tmp_path / "docs", 1024).read_text()
    assert "(runs missing)" in text


def test_missing_full_context_run_leaves_h2_pending_and_h1_on_the_untrained_curve(tmp_path):
    _write_runs(tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs" / results.RUNS["full_context"][0])
    text = results.write(results.collect(tmp_path / "runs", 1024), tmp_path / "docs", 1024).read_text()
    assert "untrained full_context 16.00x (100 -> 1600)" in text and "growing for full context: CONFIRMED" in text
    assert "than full context: PENDING** (the trained full-context run has not finished)" in text
    assert "generalizes to N = 16: CONFIRMED for mem1, memsearcher**" in text


def test_archive_keeps_inputs_when_runs_are_lost_and_takes_newer_ones(tmp_path):
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    _write_runs(runs)
    (runs / "untrained-sweep" / "debug.log").write_text("not an input")
    copied = results.archive_inputs(runs, archive)
    assert "mem1-n2-s0/sweep_episodes.jsonl" in copied and "untrained-musique/summary.json" in copied
    assert not (archive / "untrained-sweep" / "debug.log").exists()
    first = results.write(results.collect(archive, 1024), tmp_path / "a", 1024).read_text()
    shutil.rmtree(runs)  # a machine reset: the page still builds, identically, from the archive
    assert results.write(results.collect(archive, 1024), tmp_path / "b", 1024).read_text() == first
    # a step re-run later replaces only its own files
    (runs / "untrained-musique").mkdir(parents=True)
    (runs / "untrained-musique" / "summary.json").write_text(json.dumps([
        {"agent": "memsearcher", "episodes": 16, "em": 0.25, "em_stderr": 0.1, "f1": 0.3, "answered_rate": 1.0,
         "peak_context_tokens": 300}]))
    assert results.archive_inputs(runs, archive) == ["untrained-musique/summary.json"]
    text = results.write(results.collect(archive, 1024), tmp_path / "c", 1024).read_text()
    assert "| musique | untrained memsearcher | 16 | 0.250 ± 0.100 |" in text
    assert "| mem1 (trained) | 16 | 1 | 40 |" in text


def test_archive_only_copies_and_writes_no_page(tmp_path):
    _write_runs(tmp_path / "runs")
    out = results.main(["--runs", str(tmp_path / "runs"), "--archive", str(tmp_path / "archive"),
                        "--out", str(tmp_path / "docs"), "--archive-only"])
    assert out == tmp_path / "archive"
    assert (tmp_path / "archive" / "full-context-n2-s0" / "sweep_episodes.jsonl").is_file()
    assert not (tmp_path / "docs").exists()


def test_results_page_has_the_grpo_gain_tables_per_set_of_seeds(tmp_path):
    runs = tmp_path / "runs"
    for name, grpo in (("gain-s0", 0.25), ("gain-s1", 0.19), ("gain7-s3", 0.3)):
        (runs / name).mkdir(parents=True)
        (runs / name / "summary.json").write_text(json.dumps({
            "evals": {"after_sft": {"em": 0.15, "em_stderr": 0.02, "episodes": 100},
                      "after_grpo": {"em": grpo, "em_stderr": 0.02, "episodes": 100}},
            "timings": {"grpo": 600.0}, "steps": 14}))
        (runs / name / "metrics.jsonl").write_text(json.dumps({"phase": "grpo", "step": 0, "reward_mean": 0.1}) + "\n")
    (runs / "gain-s0" / "step7").mkdir()
    (runs / "gain-s0" / "step7" / "summary.json").write_text(json.dumps([{"em": 0.2, "em_stderr": 0.02}]))
    assert "gain-s0/step7/summary.json" in results.archive_inputs(runs, tmp_path / "archive")
    text = results.write(results.collect(tmp_path / "archive", 1024), tmp_path / "docs", 1024).read_text()
    assert "**SUPERSEDED (overlapping tasks): 14 GRPO steps, 100 held-out tasks, seeds 0-2**" in text and "seeds 3-5**" in text
    assert "seeds 6-8**" not in text and "Unseen held-out" not in text  # a set none of whose runs exist is left out
    assert "| gain-s0 | 100 | 0.150 ± 0.020 | 0.250 ± 0.020 | +0.100 | 0.028 | yes |" in text
    assert "| gain-s1 | 100 | 0.150 ± 0.020 | 0.190 ± 0.020 | +0.040 | 0.028 | no |" in text
    assert "| gain-s0 | 0.150 ± 0.020 | 0.200 ± 0.020 | 0.250 ± 0.020 |" in text  # held-out EM at steps 0, 7, 14
    assert "| pooled (2 runs) |" in text and "| gain7-s3 | 100 |" in text
    assert (tmp_path / "docs" / "results_gain_2.png").stat().st_size > 5000  # its place among the sets


def test_results_page_puts_the_unseen_runs_with_their_control_first(tmp_path):
    runs = tmp_path / "runs"
    run = runs / "unseen-gain-s0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "evals": {"after_sft": {"em": 0.1, "em_stderr": 0.02, "episodes": 200},
                  "after_grpo": {"em": 0.14, "em_stderr": 0.02, "episodes": 200},
                  "control": {"em": 0.12, "em_stderr": 0.02, "episodes": 200, "optimizer_steps": 14},
                  "answer_prior": {"em": 0.0, "em_stderr": 0.0, "guess": "Bo Labs", "train_tasks": 1000}},
        "timings": {"grpo": 600.0}, "steps": 7}))
    (run / "metrics.jsonl").write_text(json.dumps({"phase": "grpo", "step": 0, "reward_mean": 0.1}) + "\n")
    (run / "recipe.yaml").write_text("seed: 0\n")
    assert "unseen-gain-s0/recipe.yaml" in results.archive_inputs(runs, tmp_path / "archive")
    text = results.write(results.collect(tmp_path / "archive", 1024), tmp_path / "docs", 1024).read_text()
    assert text.index("**Unseen held-out tasks") < text.index("## Verdicts")
    assert "| unseen-gain-s0 | 0.000 | 0.120 ± 0.020 (14) | +0.020 ± 0.028" in text
    assert (tmp_path / "docs" / "results_gain_0.png").stat().st_size > 5000


def test_results_page_has_the_real_data_training_run(tmp_path):
    runs = tmp_path / "runs"
    assert "(run missing: `memrl train experiments/searchqa`" in results.write(
        results.collect(runs, 1024), tmp_path / "docs", 1024).read_text()
    (runs / "searchqa").mkdir(parents=True)

    def ev(em):
        return {"episodes": 40, "em": em, "em_stderr": 0.03, "em_ci95": [em - 0.05, em + 0.06], "f1": em + 0.1,
                "f1_stderr": 0.04, "answered_rate": 0.5, "format_error_rate": 0.2, "mean_turns": 3.0}

    (runs / "searchqa" / "summary.json").write_text(json.dumps(
        {"evals": {"zero_shot": ev(0.0), "after_sft": ev(0.05), "after_grpo": ev(0.1)}, "timings": {}, "steps": 6}))
    assert "searchqa/summary.json" in results.archive_inputs(runs, tmp_path / "archive")
    text = results.write(results.collect(tmp_path / "archive", 1024), tmp_path / "docs", 1024).read_text()
    assert "| zero-shot | 40 | 0.000 ± 0.030 [-0.050, 0.060] | 0.100 ± 0.040 | 0.50 | 0.20 | 3.00 |" in text
    assert "| after GRPO | 40 | 0.100 ± 0.030 [0.050, 0.160] |" in text and "### Trained on real questions" in text


def _write_multihop(root, ems: dict[str, dict[int, float]], peaks: dict[str, dict[int, int]], old: bool = False,
                    cut: bool = False):
    """One finished experiments/multihop run per agent (the superseded lr 1e-4 set's when `old`): its sweep, summary
    and training metrics; 4 turns an episode, one of them a format error (and with `cut`, cut by max_tokens)."""
    run_map = list(results.MULTIHOP_SETS.values())[1 if old else 0][1]
    for agent in results.MULTIHOP_AGENTS:
        run = root / run_map[agent][0]
        run.mkdir(parents=True)
        rows = [e for n in ems[agent] for e in _episodes(agent, n, ems[agent][n], peaks[agent][n])]
        lost = "context full" if agent == "full_context" else "overwritten"
        for r in rows:  # agents.audit's outcome of each objective (one per episode here), lost at hop 2
            r.update(turns=4, format_errors=1, **({"length_stops": 1} if cut else {}))
            r["facts"], r["lost_hops"] = ["answered" if r["em"] else lost], [None if r["em"] or agent == "full_context" else 2]
        (run / "sweep_episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        sweep = [{"agent": agent, "objectives": n, "wall_s": 30.0} for n in ems[agent]]  # a resumed sweep's rows
        (run / "summary.json").write_text(json.dumps({"evals": {"sweep": sweep}, "timings": {
            "sft": 60.0, "grpo": 240.0, "eval_sweep": 30.0}}))  # its last process timed only the last point
        metrics = [{"phase": "sft", "step": s, "train_tokens": 100.0} for s in range(2)]
        metrics += [{"phase": "grpo", "step": s, "train_tokens": 1000.0, "generated_tokens": 500.0,
                     "curriculum_max_n": float(1 + s)} for s in range(3)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_results_page_has_the_multihop_comparison_with_ratios_verdicts_and_budgets(tmp_path):
    ns = (4, 8, 16)
    ems = {"memsearcher": {4: 0.5, 8: 0.5, 16: 0.5}, "mem1": {4: 0.3, 8: 0.2, 16: 0.2},
           "full_context": {4: 0.5, 8: 0.1, 16: 0.0}}
    peaks = {"memsearcher": {n: 500 for n in ns}, "mem1": {n: 400 for n in ns},
             "full_context": {4: 1500, 8: 3500, 16: 8000}}
    _write_multihop(tmp_path / "runs", ems, peaks)
    text = results.write(results.collect(tmp_path / "runs", 1024), tmp_path / "docs", 1024).read_text()
    assert "**Peak context at N = 16, memsearcher / full context: 0.062** (500 vs 8000 tokens" in text
    assert "**Peak context at N = 16, mem1 / full context: 0.050**" in text
    assert "**N = 8, memsearcher EM >= full context: CONFIRMED (intervals separate).** 0.500 [" in text
    assert "**N = 8, mem1 EM >= full context: NOT SHOWN (the intervals overlap).**" in text  # 0.2 vs 0.1 on 40 tasks
    assert "| multihop-memsearcher-s0 | 2 | 3 | 3 | 3,200 | 1,500 | 6.5 |" in text  # 60 + 240 + 3 points x 30 s
    # H1-H3 on this set: memory peaks flat (1.00x) while full context grows 5.33x; full context's EM falls 0.5 -> 0
    assert "mem1 1.00x (400 -> 400), memsearcher 1.00x (500 -> 500), full_context (trained) 5.33x (1500 -> 8000)" in text
    assert text.count("growing for full context: CONFIRMED") == 1
    assert "than full context: CONFIRMED.** EM slope" in text and "vs full context -0.0375 [" in text
    assert "generalizes to N = 16: PENDING** (no sweep point at N = 2)" in text
    assert "| full_context (trained) | 16 | 1 | 40 | 0.000 [0.000, 0.000] | 0.00 | 1.00 | 0.25 | - | - | 0.00 |" in text
    # where the facts were lost (agents.audit): memsearcher answered 20 of its 40 N = 8 objectives, dropped 20
    assert ("| memsearcher (trained) | 8 | 40 | 20 (50%) | 0 (0%) | 0 (0%) | 0 (0%) | 0 (0%) | 20 (50%) | 0 (0%) | "
            "0 (0%) | 20 of 20 |") in text
    # full context's "context full" has no lost fact, so no hop
    assert "| full_context (trained) | 16 | 40 | 0 (0%) | " in text and "| 40 (100%) | 0 (0%) | - |" in text
    for png in ("results_multihop_em.png", "results_multihop_peak.png"):
        assert (tmp_path / "docs" / png).stat().st_size > 5000
    assert "multihop-mem1-s0/metrics.jsonl" in results.inputs()
    assert "multihop-lr1e-4-mem1-s0/sweep_episodes.jsonl" in results.inputs()
    assert "SUPERSEDED: learner.lr 1e-4" not in text  # a set without runs is left out


def test_results_page_keeps_the_superseded_multihop_set_apart(tmp_path):
    """The seed-0 runs at lr 1e-4 get their own title, table and plots; the shipped recipe's set, still without runs,
    says which step makes it."""
    ems = {a: {16: 0.0} for a in results.MULTIHOP_AGENTS}
    peaks = {"memsearcher": {16: 577}, "mem1": {16: 923}, "full_context": {16: 6120}}
    _write_multihop(tmp_path / "runs", ems, peaks, old=True, cut=True)
    text = results.write(results.collect(tmp_path / "runs", 1024), tmp_path / "docs", 1024).read_text()
    shipped, superseded = text.index("**experiments/multihop as shipped"), text.index("**SUPERSEDED: learner.lr 1e-4")
    assert shipped < text.index("(runs missing: `recipes/experiments/run_all.sh` step 5)") < superseded
    assert "**Peak context at N = 16, memsearcher / full context: 0.094**" in text[superseded:]
    assert "| mem1 (trained) | 16 | 1 | 40 | 0.000 [0.000, 0.000] | 0.00 | 1.00 | 0.25 | 0.25 | 40 (40) | 0.00 | 923 [" in text
    assert "| multihop-lr1e-4-mem1-s0 |" in text and (tmp_path / "docs" / "results_multihop_lr1e-4_em.png").exists()


def test_results_page_without_multihop_runs_says_which_step_makes_them(tmp_path):
    (tmp_path / "runs").mkdir()
    text = results.write(results.collect(tmp_path / "runs", 1024), tmp_path / "docs", 1024).read_text()
    assert "(runs missing: `recipes/experiments/run_all.sh` step 5)" in text


def test_an_episodes_em_is_the_mean_over_its_objectives_whatever_the_aggregate():
    """experiments/multihop sums the objectives (`env.aggregate: sum`): a record's `em` 2.0 at N = 4 is 2 right
    answers, EM 0.5; a record with no per-objective scores keeps its `em`."""
    assert results.episode_em({"em": 2.0, "objective_em": [1.0, 1.0, 0.0, 0.0]}) == 0.5
    assert results.episode_em({"em": 0.25, "objective_em": [1.0, 0.0, 0.0, 0.0]}) == 0.25
    assert results.episode_em({"em": 1.0}) == 1.0 and results.episode_em({}) == 0.0
    row = results.point_row([{"em": 2.0, "objective_em": [1.0, 1.0, 0.0, 0.0], "objectives": 4,
                              "peak_context_tokens": 10}] * 3, 1024)
    assert row["em"] == 0.5 and row["em_sum"] == 2.0
    from memrl.agents.evaluate import summarize
    from memrl.records import Trajectory

    info = {"em": 2.0, "objective_em": [1.0, 1.0, 0.0, 0.0], "objectives": ["q1", "q2", "q3", "q4"]}
    out = summarize([Trajectory([], 2.0, info=info), Trajectory([], 0.0, info={**info, "em": 0.0,
                                                                               "objective_em": [0.0] * 4})])
    assert out["em"] == 0.25 and out["em_sum"] == 1.0 and out["em_per_episode"] == [0.5, 0.0]


def test_results_page_has_the_repetition_penalty_rows(tmp_path):
    """run_all.sh step 7: one row per penalty that ran (EM, answered, format errors and cut turns per turn, turns,
    the share of objectives whose facts were not found); the step is named while none has."""
    runs = tmp_path / "runs"
    runs.mkdir()
    table = results.tuning_table(runs, *results.TUNING["reppen"])
    assert table == ["(runs missing: `recipes/experiments/run_all.sh` step 7)"]
    eps = [{"objective_em": [1.0, 0.0], "terminated": i == 0, "turns": 4, "format_errors": 2, "length_stops": 1,
            "facts": ["answered", "not found"]} for i in range(2)]
    (runs / "reppen-tune/1.1").mkdir(parents=True)
    (runs / "reppen-tune/1.1/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    text = results.write(results.collect(runs, 1024), tmp_path / "docs", 1024).read_text()
    assert "| 1.1 | 2 | 0.500 [0.500, 0.500] | 0.50 | 0.50 | 0.25 | 2 (1) | 4.0 | 50% |" in text
    assert "reppen-tune/1.3/episodes.jsonl" in results.inputs()
    assert "(runs missing: `recipes/experiments/run_all.sh` step 8)" in text  # the eval-temperature diagnostic
    (runs / "temp-tune/0.7").mkdir(parents=True)
    (runs / "temp-tune/0.7/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    table = results.tuning_table(runs, *results.TUNING["temperature"])
    assert table[2] == "| 0.7 | 2 | 0.500 [0.500, 0.500] | 0.50 | 0.50 | 0.25 | 2 (1) | 4.0 | 50% |"
    assert "temp-tune/0.0/episodes.jsonl" in results.inputs()
    assert "(runs missing: `recipes/experiments/run_all.sh` step 9)" in text  # the warm start's N
    (runs / "sft-tune/1-2-4-8").mkdir(parents=True)
    (runs / "sft-tune/1-2-4-8/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    sft_table = results.tuning_table(runs, *results.TUNING["sft_objectives"])
    assert sft_table[0].startswith("| SFT on N = | episodes |")
    assert sft_table[2] == "| 1-2-4-8 | 2 | 0.500 [0.500, 0.500] | 0.50 | 0.50 | 0.25 | 2 (1) | 4.0 | 50% |"
    assert "sft-tune/1-2-4/summary.json" in results.inputs()


def test_cut_episodes_counts_episodes_with_a_cut_turn_and_those_of_them_that_answered():
    eps = [{"length_stops": 2, "terminated": False}, {"length_stops": 1, "terminated": True},
           {"length_stops": 0, "terminated": True}, {"length_stops": 3}]
    assert results.cut_episodes(eps) == (3, 1)
    assert results.point_row([{**e, "objectives": 1, "objective_em": [0.0], "turns": 4} for e in eps],
                             1024)["cut_episodes"] == (3, 1)
    assert results.point_row([{"objectives": 1, "objective_em": [0.0], "turns": 4}], 1024)["cut_episodes"] is None
