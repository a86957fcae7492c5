"""The benchmarks run end to end at tiny size and print their tables with finite numbers (no timing asserts)."""

from __future__ import annotations

import math
import re

import pytest

pytestmark = pytest.mark.slow  # starts a vLLM engine (shared) and trains

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell}")]


def _bench_tiny(tiny: list[str], *drop: str) -> list[str]:
    """The quickstart-tiny overrides for a bench run: without its curriculum, name, extra evals, `drop`, and its
    every-tracker setting (offline W&B and MLflow start with each Trainer; test_trackers covers them)."""
    skip = ("curriculum.", "name=", "train.zero_shot", "train.eval_every", "logging.loggers", "logging.wandb_mode", *drop)
    return [o for o in tiny if not o.startswith(skip)] + ["rollout.rollout_timeout=300"]


def _finite(cell: str) -> float:
    value = float(NUMBER.fullmatch(cell).group())
    assert math.isfinite(value), cell
    return value


def test_roofline_prints_peak_and_fraction_of_peak_for_learner_and_rollout(capsys, vllm_tiny):
    from memrl.bench import roofline

    out = roofline.main(["--model", "tiny:0", "--batch", "2", "--length", "32", "--repeats", "1", "--prompts", "4",
                         "--prompt-tokens", "8", "--gen-tokens", "8", "--matmul-n", "256", "--copy-mib", "16"],
                        backend=vllm_tiny)
    text = capsys.readouterr().out
    assert "GFLOP/s" in text and "decode bandwidth bound" in text
    rows = _table_rows(text, "learner") + _table_rows(text, "vLLM rollout")
    assert len(rows) == 2
    for row in rows:
        assert _finite(row[-1]) > 0 and _finite(row[-2]) > 0  # fraction of peak, achieved GFLOP/s
    assert all(math.isfinite(v) and v > 0 for v in out.values())


def test_trl_compare_prints_both_sides_and_a_finite_ratio(capsys, vllm_tiny):
    from memrl.bench import trl_compare

    out = trl_compare.main(["--model", "tiny:0", "--prompts", "2", "--group", "2", "--tokens", "4"], backend=vllm_tiny)
    text = capsys.readouterr().out
    rows = {r[0]: r for r in _table_rows(text, "TRL") + _table_rows(text, "memrl")}
    assert set(rows) == {"TRL GRPOTrainer (HF generate)", "memrl (vLLM engine)", "memrl (HFBackend, unbatched)"}
    for row in rows.values():
        assert _finite(row[1]) > 0 and _finite(row[4]) == 2 * 2 * 4  # step s; exact token budget on every path
    ratio = re.search(r"ratio memrl\(vLLM\) / TRL step time: (\S+)", text)
    assert ratio and _finite(ratio.group(1)) > 0
    assert math.isfinite(out["ratio_step_time"])


def test_rollout_bench_prints_both_schedules_and_the_ratio(capsys, tiny_dir, vllm_tiny):
    from memrl.bench import rollout

    out = rollout.main(["--model", str(tiny_dir), "--episodes", "6", "--turns", "2", "--max-tokens", "6"],
                       backend=vllm_tiny)
    text = capsys.readouterr().out
    for schedule in ("streaming", "turn-synchronous"):
        (row,) = _table_rows(text, schedule)
        assert _finite(row[1]) > 0 and _finite(row[-1]) > 0
    assert out["ratio"] > 0 and out["turn_synchronous_ratio"] > 0 and out["generations"] >= 6
    assert math.isfinite(out["logprob_mae"])


def test_gpu_bench_runs_its_comparison_on_cpu_at_tiny_size(capsys):
    """`memrl bench gpu` is written for a GPU box; the same code path runs here in fp32 on a tiny config."""
    from memrl.bench import gpu

    rows = gpu.main(["--configs", "tiny", "--contexts", "2", "--length", "64", "--repeats", "1"])
    text = capsys.readouterr().out
    (row,) = _table_rows(text, "tiny")
    assert row[-3:] == ["n/a (CPU)"] * 3  # peak memory is read from CUDA only
    assert all(_finite(c) > 0 for c in row[2:9])  # tok/s of the three, both ratios, shares of peak
    assert rows[0]["ratio_amp"] == pytest.approx(rows[0]["plain_amp_tokens_per_s"] / rows[0]["memrl_tokens_per_s"])
    assert rows[0]["dtype"] == "float32" and rows[0]["params"] == 2 * 512 * 128 + 2 * (4 * 128 * 128 + 3 * 128 * 256
                                                                                      + 2 * 128) + 128


def test_scaling_bench_measures_both_sync_paths_and_both_rank_counts(capsys, ray_local):
    """`memrl bench scaling` at tiny size: both sync paths and both rank counts train, sync and report finite
    times (two configurations instead of the default three, to keep the suite short: `ratios` is checked on its
    own below)."""
    from memrl.bench import scaling
    from tests.rl.test_quickstart_tiny import TINY

    tiny = _bench_tiny(TINY)
    out = scaling.main(["--steps", "1", "--syncs", "2", "--configs", "blob:1,native:2",
                        *[a for o in tiny for a in ("--set", o)]])
    text = capsys.readouterr().out
    rows = _table_rows(text, "native") + _table_rows(text, "blob")
    assert sorted((r[0], r[1]) for r in rows) == [("blob", "1"), ("native", "2")]
    for row in rows:
        assert all(_finite(c.rstrip("%").split()[0]) > 0 for c in row[2:])
    assert {r["ranks"] for r in out["rows"]} == {1, 2} and all(r["train_tokens"] > 0 for r in out["rows"])
    assert "ratio native / blob" not in text and "ratio 2 ranks" not in text  # neither ratio has both of its rows


def test_scaling_ratios_by_hand():
    from memrl.bench.scaling import ratios

    def row(mode, ranks, step, learn, bare, share):
        return {"mode": mode, "ranks": ranks, "step_s": step, "learn_s": learn, "bare_sync_s": bare, "sync_share": share}

    rows = [row("native", 1, 10.0, 4.0, 1.5, 0.04), row("blob", 1, 18.0, 4.0, 9.0, 0.24), row("native", 2, 8.0, 2.5, 2.0, 0.05)]
    assert ratios(rows) == {"native_over_blob_sync": 1.5 / 9.0, "native_sync_share": 0.04, "blob_sync_share": 0.24,
                            "two_over_one_rank_step": 0.8, "two_over_one_rank_learn": 2.5 / 4.0}
    assert ratios(rows[1:]) == {}


def test_async_bench_runs_both_staleness_settings_and_prints_the_estimate(capsys, ray_local):
    from memrl.bench import overlap
    from tests.rl.test_quickstart_tiny import TINY

    tiny = _bench_tiny(TINY, "train.steps")
    out = overlap.main(["--steps", "2", *[a for o in tiny for a in ("--set", o)]])
    text = capsys.readouterr().out
    rows = _table_rows(text, "0") + _table_rows(text, "1")
    assert [r[0] for r in rows] == ["0", "1"] and all(_finite(c) >= 0 for r in rows for c in r[1:])
    sync, stale = out["rows"]
    assert out["ratio_wall"] == pytest.approx(stale["wall_s"] / sync["wall_s"])
    # the estimate overlaps the staleness-0 run's measured times on paper: 2 steps serial vs first step serial,
    # the second max(rollout, learn) + sync
    step = sync["rollout_s"] + sync["learn_s"] + sync["sync_s"]
    overlapped = step + (max(sync["rollout_s"], sync["learn_s"]) + sync["sync_s"])
    assert out["estimate_serial_s"] == pytest.approx(2 * step)
    assert out["estimate_overlapped_s"] == pytest.approx(overlapped)
    assert out["estimate_speedup"] == pytest.approx(2 * step / overlapped)
    assert f"{2 * step:.1f} s -> {overlapped:.1f} s, speedup {2 * step / overlapped:.2f}x (estimate)" in text
    assert stale["wait_s"] >= 0 and sync["wait_s"] < 0.01  # nothing to wait for at staleness 0


def test_lora_bench_compares_learner_and_sync_at_tiny_size(capsys):
    from memrl.bench import lora

    out = lora.main(["--model", "tiny:0", "--contexts", "2", "--length", "64", "--repeats", "1", "--top-blocks", "1"])
    text = capsys.readouterr().out
    learner_rows = [r for r in _table_rows(text, "LoRA") + _table_rows(text, "full") if len(r) == 5]
    assert {r[0] for r in learner_rows} == {"LoRA", "full, top 1"}
    assert out["lora_trainable"] < out["full_trainable"] and out["lora_blob_mb"] < out["full_blob_mb"]
    for key in ("ratio_step", "ratio_peak_rss", "ratio_sync_blob", "ratio_sync_native", "adapter_blob_s",
                "full_blob_s", "full_native_s"):
        assert math.isfinite(out[key]) and out[key] > 0, key


def test_learner_bench_prints_every_path_and_the_proximal_forward_it_no_longer_runs(capsys):
    """`memrl bench learner` at tiny size: full forward, shared prefix, bf16 autocast and the plain loop rows, and
    the separate no-grad proximal forward that the mismatch correction ran before each update until session 18."""
    from memrl.bench import learner

    out = learner.main(["--model", "tiny:0", "--contexts", "4", "--length", "64", "--prompt-share", "0.5",
                        "--prefix", "16", "--bf16", "--repeats", "1"])
    text = capsys.readouterr().out
    assert len(out["rows"]) == 5 and all(t > 0 for t in out["rows"].values())
    assert out["proximal_forward_s"] > 0 and "the separate no-grad proximal forward" in text
