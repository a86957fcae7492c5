"""`memrl recipe plan NAME`: check a recipe's files and estimate its GPU memory before anything loads.

It builds what a run builds first, without a GPU and without model weights: the model's config and
tokenizer (a missing model directory is an error here, not a traceback later), the agent, and one
env whose first tool call runs for real (so a missing or malformed corpus, question file or
retriever fails now, not at the first search of the first step). Then it estimates the memory of one
learner rank and of one rollout engine on the GPUs the recipe declares (`resources.gpu_memory_gib`)
and refuses a recipe that cannot fit, with the numbers.

The learner estimate (bytes; `b` = 2 for bf16 on GPU, N parameters, N_t of them trainable, R ranks):
weights b*N (/R under ZeRO-3), gradients b*N_t (/R from ZeRO-2), AdamW state 12*N_t (fp32 master copy,
m, v; /R from ZeRO-1), a frozen reference b*N when `algorithm.kl_coef` > 0 (/R under ZeRO-3: sharded
with the policy), and activations of one
micro-batch (`learner.micro_batch_tokens`): with gradient checkpointing one saved hidden state per
layer plus one layer recomputed, without it every layer's. R = `learner.ranks`; each rank is assumed to
have a GPU of its own (`resources.gpus_per_learner_rank`).
These are estimates to catch recipes that cannot fit, not a promise that one that passes will.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath

GIB = 1024**3
USABLE = 0.9  # share of a GPU's memory a plan may count on (CUDA context, allocator fragmentation)


class PlanError(ValueError):
    """A recipe that cannot run as written: a missing file, or memory that does not fit."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a model that the memory estimates need (`model_shape`)."""

    params: int  # all parameters (untied: memrl trains with an untied lm_head)
    hidden: int
    layers: int
    intermediate: int
    vocab: int

    @property
    def per_layer(self) -> int:
        return (self.params - 2 * self.vocab * self.hidden) // max(1, self.layers)


def model_shape(model_dir) -> ModelShape:
    """Parameter count and sizes of the model at `model_dir`, from its config alone (a meta-device build)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    cfg.tie_word_embeddings = False
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    text = getattr(cfg, "text_config", cfg)
    return ModelShape(params, text.hidden_size, text.num_hidden_layers, getattr(text, "intermediate_size", 4 * text.hidden_size),
                      text.vocab_size)


def trainable(shape: ModelShape, train_layers: int | None) -> int:
    """Trainable parameters: all, or the top K blocks + final norm + lm_head (`learner.train_layers`)."""
    if train_layers is None:
        return shape.params
    return min(train_layers, shape.layers) * shape.per_layer + shape.vocab * shape.hidden + shape.hidden


def learner_bytes(shape: ModelShape, recipe, dtype_bytes: int = 2) -> dict[str, float]:
    """Estimated bytes of one learner rank, by part (see the module docstring)."""
    lc, stage, ranks = recipe.learner, recipe.learner.zero_stage, recipe.learner.ranks
    n, nt = shape.params, trainable(shape, recipe.learner.train_layers)
    tokens = lc.micro_batch_tokens
    per_layer_act = tokens * (18 * shape.hidden + 4 * shape.intermediate) * dtype_bytes
    if lc.gradient_checkpointing:
        activations = tokens * shape.hidden * shape.layers * dtype_bytes + per_layer_act
    else:
        activations = per_layer_act * shape.layers
    return {
        "weights": dtype_bytes * n / (ranks if stage == 3 else 1),
        "gradients": dtype_bytes * nt / (ranks if stage >= 2 else 1),
        "optimizer": 12 * nt / (ranks if stage >= 1 else 1),
        "reference": dtype_bytes * n / (ranks if stage == 3 else 1) if recipe.algorithm.kl_coef > 0 else 0.0,
        "activations": float(activations),
    }


def engine_bytes(shape: ModelShape, recipe, dtype_bytes: int = 2) -> dict[str, float]:
    """What one rollout engine needs besides its KV cache: its share of the weights (tensor parallel)."""
    return {"weights": dtype_bytes * shape.params / recipe.rollout.tensor_parallel_size}


def resident(learner: dict[str, float]) -> float:
    """Bytes a learner rank keeps on its GPU between steps (all but activations): what a colocated engine, awake
    while the learner waits, must fit beside."""
    return sum(v for k, v in learner.items() if k != "activations")


def colocated_kv(learner: dict[str, float], engine_gib: float, usable: float) -> float:
    """GiB a colocated engine has for its KV cache: what the learner's resident state and its weights leave."""
    return usable - resident(learner) / GIB - engine_gib


def colocated_line(learner: dict[str, float], engine_gib: float, usable: float, chosen: bool) -> str:
    """The colocated placement's memory (rl/placement.py), printed for either placement: while the learner trains
    the engine sleeps (its weights in host memory, no KV cache); while the engine rolls out the learner's
    weights, gradients, optimizer and reference stay resident and its activations are freed."""
    keep, kv = resident(learner) / GIB, colocated_kv(learner, engine_gib, usable)
    mark = "resources.placement: colocated" if chosen else "if colocated (resources.placement: colocated)"
    return (f"{mark}: training {sum(learner.values()) / GIB:.1f} GiB (engine asleep); rolling out {keep:.1f} GiB "
            f"resident learner + {engine_gib:.1f} GiB engine weights, {kv:.1f} GiB left for the KV cache")


def check_files(recipe, probe: bool = True):
    """Model config, tokenizer, agent and env as a run builds them, and with `probe` one real tool call (which
    builds the retriever over the whole corpus); returns (shape, tokenizer). Raises PlanError naming the key."""
    from memrl.agents import make_agent
    from memrl.envs import build
    from memrl.models import load_tokenizer

    model_dir = check_model(recipe.model.name, "model.name")
    try:
        shape = model_shape(model_dir)
        tokenizer = load_tokenizer(model_dir)
    except (OSError, ValueError) as exc:
        raise PlanError(f"model.name: {_one_line(exc)}") from None
    make_agent(tokenizer, recipe.agent)
    try:
        for section in (recipe.env.at(), recipe.env.at(held_out=True)):
            env = build(section)
            if probe:
                obs, info = env.reset(seed=recipe.env.train_seed_offset)
                tools = list(info.get("tools", {}))
                if tools:  # one real tool call: builds the retriever over the corpus now
                    env.step(f"<{tools[0]}>{obs.splitlines()[0][:200]}</{tools[0]}>")
    except (FileNotFoundError, OSError, ValueError, KeyError) as exc:
        raise PlanError(f"env ({recipe.env.id}, env.kwargs / env.eval_kwargs): {_one_line(exc)}") from None
    return shape, tokenizer


def check_model(name: str, key: str):
    """The local directory of model `name` (no untied copy is made here), or a PlanError naming `key`."""
    from memrl.models import resolve_model_dir

    try:
        return resolve_model_dir(name, untie=False)  # config and tokenizer only
    except (FileNotFoundError, ValueError) as exc:
        raise PlanError(f"{key}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def plan(recipe) -> str:
    """The plan as text; raises PlanError when a file is missing or the memory cannot fit."""
    shape, _ = check_files(recipe)
    learner = learner_bytes(shape, recipe)
    engine = engine_bytes(shape, recipe)
    res = recipe.resources
    lines = [f"recipe {recipe.name}: model {recipe.model.name} ({shape.params / 1e9:.2f}B parameters, "
             f"{trainable(shape, recipe.learner.train_layers) / 1e9:.2f}B trainable); env and agent built, "
             "one tool call ran",
             f"learner: {recipe.learner.ranks} rank(s), each on a GPU "
             f"{'shared with an engine' if res.placement == 'colocated' else 'of its own'}, "
             f"ZeRO-{recipe.learner.zero_stage}, bf16, estimated per rank:"]
    lines += [f"  {k:<12}{v / GIB:8.1f} GiB" for k, v in learner.items()]
    total = sum(learner.values())
    lines.append(f"  {'total':<12}{total / GIB:8.1f} GiB")
    need = engine["weights"] / GIB
    lines.append(f"rollout: {recipe.rollout.workers} engine(s), tensor parallel {recipe.rollout.tensor_parallel_size}, "
                 f"{need:.1f} GiB of weights per GPU")
    if res.gpu_memory_gib is None:
        lines.append("no resources.gpu_memory_gib declared: memory not checked against a GPU")
        return "\n".join(lines)
    usable = res.gpu_memory_gib * USABLE
    lines.append(f"GPU: {res.gpu_memory_gib:.0f} GiB declared, {usable:.0f} GiB usable ({USABLE:.0%})")
    problems = []
    if total / GIB > usable:
        problems.append(f"the learner needs ~{total / GIB:.0f} GiB per rank, above the {usable:.0f} GiB usable on one "
                        f"{res.gpu_memory_gib:.0f} GiB GPU: lower learner.micro_batch_tokens, turn on "
                        "learner.gradient_checkpointing, train fewer blocks (learner.train_layers), set "
                        "algorithm.kl_coef: 0 (no reference), or use a smaller model")
    lines.append(colocated_line(learner, need, usable, res.placement == "colocated"))
    if res.placement == "colocated":  # the engine has what the learner's resident state leaves, while it rolls out
        kv_room = colocated_kv(learner, need, usable)
    else:
        kv_room = res.gpu_memory_gib * recipe.rollout.gpu_memory_utilization - need
    if kv_room <= 0 and res.placement == "colocated":
        problems.append(f"colocated, the learner's resident {resident(learner) / GIB:.1f} GiB and the engine's weights "
                        f"({need:.1f} GiB) leave no room for a KV cache in {usable:.0f} GiB: use resources.placement: "
                        "split, or shrink the learner (keys above)")
    elif kv_room <= 0:
        problems.append(f"a rollout engine's weights ({need:.1f} GiB) do not fit in rollout.gpu_memory_utilization="
                        f"{recipe.rollout.gpu_memory_utilization} of {res.gpu_memory_gib:.0f} GiB: raise it or "
                        "rollout.tensor_parallel_size")
    elif res.placement == "colocated":
        share = math.floor(100 * (kv_room + need) / res.gpu_memory_gib) / 100  # printed as a key's value: round down
        lines.append(f"rollout engine: {kv_room:.1f} GiB left for its KV cache (rollout.gpu_memory_utilization "
                     f"{recipe.rollout.gpu_memory_utilization} is the engine's share of the GPU: at most {share:.2f} "
                     "here)")
        if recipe.rollout.gpu_memory_utilization > share:
            problems.append(f"colocated, rollout.gpu_memory_utilization={recipe.rollout.gpu_memory_utilization} "
                            f"would take memory the learner keeps: set it to at most {share:.2f}")
    else:
        lines.append(f"rollout engine: {kv_room:.1f} GiB left for its KV cache")
    if problems:
        raise PlanError("\n".join(lines + ["does not fit:"] + [f"- {p}" for p in problems]))
    lines.append("fits")
    return "\n".join(lines)


def check_storage(recipe, nodes: int) -> None:
    """Fail before anything starts when a run on `nodes` > 1 Ray nodes has a relative `output_dir`: every node
    would resolve it in its own working directory, and the ranks' checkpoint shards and weights would land on
    different disks (a resume or an export then finds only the driver's files). `output_dir` must then be an
    absolute path on storage every node mounts."""
    if nodes > 1 and not PurePath(recipe.output_dir).is_absolute():
        raise PlanError(f"output_dir {recipe.output_dir!r} is relative but the Ray cluster has {nodes} nodes: each node "
                        "would write its part of the run (checkpoint shards, weights) under its own working "
                        "directory; set output_dir to an absolute path on storage every node mounts")
