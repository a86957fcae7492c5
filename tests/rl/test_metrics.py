"""Metrics JSONL: resuming drops the GRPO steps written after the checkpoint, and a line cut by a kill."""

import json

from memrl.rl.metrics import MetricsWriter, read_metrics


def test_resume_truncates_later_grpo_steps_and_cut_lines(tmp_path):
    lines = [{"phase": "sft", "step": 5}] + [{"phase": "grpo", "step": s, "em": s / 10} for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"phase": "gr')
    w = MetricsWriter(tmp_path, resume_step=2)
    assert read_metrics(tmp_path / "metrics.jsonl") == lines[:3]
    w.write({"phase": "grpo", "step": 2, "em": float("nan")})
    assert read_metrics(tmp_path / "metrics.jsonl")[-1] == {"phase": "grpo", "step": 2, "em": None}
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
