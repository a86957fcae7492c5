
"""Experiment trackers (rl/trackers.py), offline: the W&B run files and the MLflow file store hold the recipe,
every metric of metrics.jsonl with the same values at the same steps, and the artifacts; a resume continues the
same runs."""

import re

import pytest

from memrl.recipes.schema import LoggingCfg, load_recipe
from memrl.rl.metrics import MetricsWriter, read_metrics
from memrl.rl.trackers import make_trackers
from memrl.testing import check_mlflow_run, check_wandb_run

RECORDS = [{"phase": "sft", "step": 0, "sft_loss": 2.5, "tokens": 40}, {"phase": "sft", "step": 1, "sft_loss": 1.5},
           {"phase": "grpo", "step": 0, "reward_mean": 0.25, "em": 0.0, "skipped": False, "grad_norm": float("nan")},
           {"phase": "grpo", "step": 1, "reward_mean": 0.5, "em": 0.125}]


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_and_mlflow_hold_the_recipe_the_metrics_and_the_artifacts(tmp_path):
    recipe = load_recipe("quickstart").model_dump(mode="json")
    cfg = LoggingCfg(loggers=["tensorboard", "wandb", "mlflow"], wandb_mode="offline")
    w = MetricsWriter(tmp_path, make_trackers(cfg, tmp_path, recipe, "quickstart"))
    for rec in RECORDS[:3]:
        w.write(rec)
    (tmp_path / "report.md").write_text("# report\n")
    w.close([tmp_path / "report.md", tmp_path / "missing.png"])
    w.close()  # twice: harmless
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert len(metrics) == 3
    wb = check_wandb_run(tmp_path, recipe, metrics)
    assert wb["artifacts"] == {"quickstart-results": ["report.md"]} and "report.md" in wb["files"]
    assert {"recipe.json", "report.md"} <= set(check_mlflow_run(tmp_path, recipe, metrics))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    # a resumed run continues the same tracker runs (ids in trackers.json)
    w = MetricsWriter(tmp_path, make_trackers(cfg, tmp_path, recipe, "quickstart", resume=True))
    w.write(RECORDS[3])
    w.close()
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    check_mlflow_run(tmp_path, recipe, metrics)  # one run holding all four records
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<id>, with "-1" appended when the resumed run starts in the same second
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", p.name).group(1) for p in runs}
    assert len(ids) == 1  # the same W&B run id (W&B writes a new offline directory per process)


def test_a_failing_tracker_is_dropped_and_metrics_jsonl_keeps_everything(tmp_path, caplog):
    class Broken:
        def log(self, phase, step, values):
            raise ConnectionError("tracker server down")

        def artifacts(self, paths):
            pass

        def close(self):
            pass

    w = MetricsWriter(tmp_path, [Broken()])
    for rec in RECORDS:
        w.write(rec)
    w.close()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 4
    assert "tracker Broken failed in log" in caplog.text


def test_an_unknown_logger_is_a_clear_recipe_error():
    from memrl.recipes.schema import RecipeError

    with pytest.raises(RecipeError, match="logging.loggers.0.*'tensorboard', 'wandb' or 'mlflow'"):
        load_recipe("quickstart", ["logging.loggers=[neptune]"])
