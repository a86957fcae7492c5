"""Experiment trackers: where a run's metrics go besides metrics.jsonl (always written first): TensorBoard,
Weights & Biases and MLflow, any subset (`logging.loggers`).

Each tracker gets the resolved recipe as the run's config, every number of every metrics.jsonl record (as
`{phase}/{key}` at that phase's step: sft, grpo and control each count their own steps), and at the end of the run
its report, plots, viewer page and summary as artifacts. A resumed run continues the same tracker run (its id is
kept in `<output_dir>/trackers.json`). A tracker that fails to log warns and is dropped: the run and
metrics.jsonl go on.

- W&B: `wandb.init(project=logging.project, name=run name, config=recipe, dir=output_dir)`, mode from
  `logging.wandb_mode` (offline writes `<output_dir>/wandb/offline-run-*`, `wandb sync` uploads it later); each
  phase's metrics are plotted against `{phase}/step` (`define_metric`), so phases that restart at step 0 do not
  fight over W&B's global step.
- MLflow: `logging.mlflow_uri` (a tracking server, a database), default a local file store
  `<output_dir>/mlruns` (MLflow keeps it in maintenance mode: memrl opts in with MLFLOW_ALLOW_FILE_STORE);
  experiment `logging.project`; the recipe as `recipe.json` and as flattened params.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)
TRACKERS = ("tensorboard", "wandb", "mlflow")


class Tracker(Protocol):
    """One destination of a run's metrics."""

    def log(self, phase: str, step: int, values: dict[str, float]) -> None: ...

    def artifacts(self, paths: list[Path]) -> None: ...

    def close(self) -> None: ...


def numbers(record: dict) -> dict[str, float]:
    """The values a tracker logs from a metrics record: finite ints and floats (not bools), except `step`."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "step"}


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys -> strings (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


class _Ids:
    """Tracker run ids kept in `<output_dir>/trackers.json`, so that a resumed run continues the same runs."""

    def __init__(self, out: Path) -> None:
        self.path = out / "trackers.json"

    def get(self, name: str) -> str | None:
        return json.loads(self.path.read_text()).get(name) if self.path.exists() else None

    def set(self, name: str, value: str) -> None:
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.path.write_text(json.dumps({**data, name: value}))


class TensorBoardTracker:
    """Scalars under `<output_dir>/tensorboard` as `{phase}/{key}` at the phase's step (no artifacts)."""

    def __init__(self, out: Path, cfg, config: dict, name: str, resume: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, phase: str, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.tb.add_scalar(f"{phase}/{k}", v, step)
        self.tb.flush()

    def artifacts(self, paths: list[Path]) -> None:
        return None

    def close(self) -> None:
        self.tb.close()


class WandbTracker:
    """A W&B run (see the module docstring); artifacts go as one W&B artifact `<name>-results` and as run files."""

    def __init__(self, out: Path, cfg, config: dict, name: str, resume: bool) -> None:
        import wandb

        ids = _Ids(out)
        run_id = (ids.get("wandb") if resume else None) or uuid.uuid4().hex[:8]
        ids.set("wandb", run_id)
        self.name = name
        self.run = wandb.init(project=cfg.project, name=name, id=run_id, resume="allow", dir=str(out), config=config,
                              mode=cfg.wandb_mode, reinit="create_new")
        self.phases: set[str] = set()

    def log(self, phase: str, step: int, values: dict[str, float]) -> None:
        if phase not in self.phases:
            self.run.define_metric(f"{phase}/step")
            self.run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            self.phases.add(phase)
        self.run.log({f"{phase}/step": step, **{f"{phase}/{k}": v for k, v in values.items()}})

    def artifacts(self, paths: list[Path]) -> None:
        import wandb

        art = wandb.Artifact(f"{self.name}-results", type="results")
        for p in paths:
            art.add_file(str(p))
            self.run.save(str(p), base_path=str(p.parent), policy="now")
        self.run.log_artifact(art)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run (see the module docstring), written through `MlflowClient` (no global active run)."""

    def __init__(self, out: Path, cfg, config: dict, name: str, resume: bool) -> None:
        from mlflow.tracking import MlflowClient

        uri = cfg.mlflow_uri or (out / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        ids = _Ids(out)
        self.run_id = ids.get("mlflow") if resume else None
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(cfg.project)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.project)
            self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
            ids.set("mlflow", self.run_id)
            self.client.log_dict(self.run_id, config, "recipe.json")
            from mlflow.entities import Param

            params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, phase: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{phase}/{k}", v, ts, step) for k, v in values.items()])

    def artifacts(self, paths: list[Path]) -> None:
        for p in paths:
            self.client.log_artifact(self.run_id, str(p))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def make_trackers(cfg, out: Path, config: dict, name: str, resume: bool = False) -> list[Tracker]:
    """The trackers of a recipe's `logging` section (`cfg.loggers`), each started on run `name` with `config` (the
    resolved recipe); `resume` continues the runs recorded in `out/trackers.json`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [_CLASSES[kind](out, cfg, config, name, resume) for kind in cfg.loggers]
