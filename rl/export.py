"""`memrl export`: a checkpoint -> a plain Hugging Face model directory that transformers and vLLM load.

The directory holds safetensors weights (untied lm_head, fp32), config, tokenizer with its chat
template, generation config, and a model card (README.md) with the recipe and the run's final metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from memrl.io import atomic_dir
from memrl.rl.checkpoint import latest, verify


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir / checkpoints dir (its newest intact checkpoint)."""
    path = Path(path)
    if (path / "trainer_state.pt").exists():
        problem = verify(path)
        if problem:
            raise ValueError(f"checkpoint {path} is not usable: {problem}")
        return path
    for root in (path / "checkpoints", path):
        found = latest(root) if root.is_dir() else None
        if found:
            return found
    raise FileNotFoundError(f"no intact checkpoint at or under {path}")


def export(checkpoint_path: str | Path, out: str | Path) -> Path:
    """Write the checkpoint at or under `checkpoint_path` (`resolve_checkpoint`) to `out` as a HF model directory
    (the checkpoint's `model/` files plus a README.md model card) and return `out`. An existing `out` is
    replaced; the new one is built beside it and renamed into place. The card's metrics come from the run's
    summary.json, or from the checkpoint's own evals when the run has none."""
    ckpt = resolve_checkpoint(checkpoint_path)
    out = Path(out)
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    run_dir = ckpt.parent.parent
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"evals": state.get("evals", {})}
    if out.exists():
        shutil.rmtree(out)

    def build(tmp: Path) -> None:
        for f in (ckpt / "model").iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / "README.md").write_text(model_card(state, summary, ckpt))

    return atomic_dir(out, build)


def model_card(state: dict, summary: dict, ckpt: Path) -> str:
    """The README.md of an exported model: HF front matter; the agent, env, objectives, base model and GRPO
    step (from `state`, the checkpoint's trainer state); a table of EM, F1 and peak context tokens per eval
    phase of `summary["evals"]`; and the recipe as YAML."""
    recipe = state.get("recipe", {})
    evals = summary.get("evals", {})
    rows = [f"| {k} | {v.get('em', 0):.3f} | {v.get('f1', 0):.3f} | {v.get('peak_context_tokens', 0):.0f} |"
            for k, v in evals.items() if isinstance(v, dict)]
    return "\n".join([
        "---", "library_name: transformers", "tags: [memrl, grpo, memory-agent]", "---", "",
        f"# {recipe.get('name', 'memrl model')}", "",
        f"Trained with memrl: agent `{recipe.get('agent', {}).get('name')}` on `{recipe.get('env', {}).get('id')}` "
        f"({recipe.get('env', {}).get('objectives')} objectives), base model `{recipe.get('model', {}).get('name')}`, "
        f"exported from `{ckpt.name}` (GRPO step {state.get('step')}).", "",
        "## Held-out metrics", "", "| phase | EM | F1 | peak context tokens |", "|---|---|---|---|", *rows, "",
        "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```", "",
    ])
