"""The `memrl` command line. Each subcommand is a small function; heavy imports happen inside it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from memrl import __version__


def _model_prepare(args: argparse.Namespace) -> int:
    from memrl.models import resolve_model_dir

    print(resolve_model_dir(args.name))
    return 0


def _model_chat(args: argparse.Namespace) -> int:
    from memrl.models import load_model, load_tokenizer

    tok = load_tokenizer(args.name)
    model = load_model(args.name)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": args.prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return 0


def _train(args: argparse.Namespace) -> int:
    from memrl.plan import check_files
    from memrl.recipes.schema import load_recipe
    from memrl.rl.report import write_report
    from memrl.rl.trainer import Trainer

    recipe = load_recipe(args.recipe, args.set)
    check_files(recipe, probe=False)  # a missing model, data folder or corpus: one line now, not a traceback later
    trainer = Trainer(recipe, resume=args.resume)
    try:
        summary = trainer.run()
        report = write_report(trainer)
    finally:
        trainer.close()
    print(f"run finished: {summary['steps']} GRPO steps")
    print(f"report:      {report}")
    print(f"viewer:      {recipe.out / 'viewer.html'}  (what the agent kept in memory, turn by turn)")
    print(f"metrics:     {recipe.out / 'metrics.jsonl'}  (tensorboard --logdir {recipe.out / 'tensorboard'})")
    print(f"checkpoints: {recipe.out / 'checkpoints'}")
    print(f"model:       {summary['model']}  (a Hugging Face directory for transformers / vllm)")
    return 0


def _recipe_validate(args: argparse.Namespace) -> int:
    from memrl.recipes.schema import load_recipe

    load_recipe(args.recipe, args.set)
    print(f"{args.recipe}: valid")
    return 0


def _recipe_plan(args: argparse.Namespace) -> int:
    from memrl.plan import plan
    from memrl.recipes.schema import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    print(plan(recipe))
    if args.address:
        from memrl.cluster.submit import node_resources
        from memrl.plan import PlanError, check_storage
        from memrl.rl.placement import fit_on_nodes, layout

        nodes = node_resources(args.address)
        lay = layout(recipe.resources, recipe.learner.ranks, recipe.rollout.workers)
        total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
        print(f"cluster at {args.address}: {len(nodes)} node(s) alive, {total['CPU']:g} CPU, {total['GPU']:g} GPU; "
              f"the run asks {lay.cpus:g} CPU, {lay.gpus:g} GPU ({lay.placement})")
        check_storage(recipe, len(nodes))
        problem = fit_on_nodes(lay, nodes)
        if problem:
            raise PlanError(f"the cluster cannot place the run's learner ranks and engines: {problem} (learner.ranks, "
                            "rollout.workers, resources.*)")
        print("the learner ranks and engines fit on the cluster's nodes")
    return 0


def _recipe_show(args: argparse.Namespace) -> int:
    from memrl.recipes.schema import dump, load_recipe

    print(dump(load_recipe(args.recipe, args.set)), end="")
    return 0


def _recipe_list(args: argparse.Namespace) -> int:
    from memrl.recipes.schema import shipped_recipes

    print("\n".join(shipped_recipes()))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from memrl.plan import check_model
    from memrl.recipes.schema import Recipe, load_recipe, revalidate
    from memrl.rl.eval_cli import run_eval, table

    recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    env = {k: v for k, v in (("id", args.env), ("max_turns", args.max_turns)) if v is not None}
    if args.env_kwargs is not None:
        env["kwargs"] = json.loads(args.env_kwargs)
    rollout = {"max_tokens": args.max_tokens} if args.max_tokens is not None else {}
    train = {k: v for k, v in (("held_out", args.held_out), ("eval_repetition_penalty", args.repetition_penalty),
                               ("eval_temperature", args.temperature)) if v is not None}
    recipe = recipe.model_copy(update={"env": recipe.env.model_copy(update=env),
                                       "rollout": recipe.rollout.model_copy(update=rollout),
                                       "train": recipe.train.model_copy(update=train)})
    recipe = revalidate(recipe, "memrl eval")  # the flags above bypass the schema's bounds (e.g. --temperature -1)
    check_model(args.model, "--model")
    rows = run_eval(args.model, args.agent.split(","), [int(x) for x in args.objectives.split(",")], args.episodes,
                    Path(args.out), recipe)
    print(table(rows), end="")
    print(f"episodes: {Path(args.out) / 'episodes.jsonl'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from memrl.rl.export import export

    print(export(args.checkpoint, args.out))
    return 0


def _retriever_serve(args: argparse.Namespace) -> int:
    from memrl.envs.server import run_cli

    return run_cli(args)


def _retriever_build(args: argparse.Namespace) -> int:
    from memrl.envs.server import build_cli

    return build_cli(args)


def _envs_list(args: argparse.Namespace) -> int:
    from memrl.envs import list_envs

    rows = list_envs()
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {desc}" for k, desc in rows))
    return 0


BENCHES = ("rollout", "learner", "gpu", "memory_scaling", "trl_compare", "roofline", "results", "gain", "scaling", "async",
           "lora", "engine_start")
BENCH_MODULES = {"async": "overlap"}  # `async` is a Python keyword: its module is bench/overlap.py


def _bench(args: argparse.Namespace) -> int:
    import importlib

    importlib.import_module(f"memrl.bench.{BENCH_MODULES.get(args.name, args.name)}").main(args.args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `memrl` argument parser: model, train, recipe, envs, retriever, submit / jobs (`memrl.cluster.submit`),
    eval, bench, doctor (`memrl.cluster.acceptance`) and export. Each leaf subcommand stores its handler in `args.func` (Namespace -> exit code)."""
    parser = argparse.ArgumentParser(
        prog="memrl", description="Train LLM agents with RL to keep a compact memory (MEM1, MemSearcher)."
    )
    parser.add_argument("--version", action="version", version=f"memrl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    model = sub.add_parser("model", help="prepare and try models").add_subparsers(dest="action", required=True)
    p = model.add_parser("prepare", help="convert/locate a model and print its HF directory")
    p.add_argument("name", help="smollm2-135m-instruct, tiny:SEED, or a local HF directory")
    p.set_defaults(func=_model_prepare)
    p = model.add_parser("chat", help="greedy-answer one prompt with a model (HF generate)")
    p.add_argument("name", help="smollm2-135m-instruct, tiny:SEED, or a local HF directory")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=_model_chat)
    p = sub.add_parser("train", help="run a recipe: eval -> SFT -> GRPO -> eval, with checkpoints and a report")
    p.add_argument("recipe", help="shipped recipe name (memrl recipe list) or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    p.add_argument("--resume", action="store_true", help="continue from the last intact checkpoint")
    p.set_defaults(func=_train)

    recipe = sub.add_parser("recipe", help="inspect recipes").add_subparsers(dest="action", required=True)
    for name, fn, text in (("validate", _recipe_validate, "check a recipe against the schema"),
                           ("show", _recipe_show, "print the fully resolved recipe"),
                           ("plan", _recipe_plan, "check its files (model, data, corpus) and estimate GPU memory "
                            "per learner rank and engine; refuses a recipe that cannot fit")):
        p = recipe.add_parser(name, help=text)
        p.add_argument("recipe")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        if name == "plan":
            p.add_argument("--address", default=None, help="a Ray cluster's dashboard (http://head:8265): read its "
                           "nodes and check that the run's bundles fit on them and its storage suits them")
        p.set_defaults(func=fn)
    recipe.add_parser("list", help="list shipped recipes").set_defaults(func=_recipe_list)

    envs = sub.add_parser("envs", help="environments").add_subparsers(dest="action", required=True)
    envs.add_parser("list", help="list the registered memrl/ environments").set_defaults(func=_envs_list)
    retriever = sub.add_parser("retriever", help="retrieval server (Search-R1 /retrieve, FlashRAG /search and /batch_search)")
    actions = retriever.add_subparsers(dest="action", required=True)
    p = actions.add_parser("serve", help="serve a BM25 or dense index over a corpus file, or a prebuilt FAISS index")
    p.add_argument("--corpus", required=True, nargs="+",
                   help="corpus file(s): JSON list of {title, text}, a dict title -> sentences, or Search-R1 .jsonl {id, contents}")
    p.add_argument("--kind", choices=("bm25", "dense", "faiss"), default="bm25", help="retrieval backend")
    p.add_argument("--index", help="faiss: the prebuilt index (e.g. Search-R1's e5_Flat.index)")
    p.add_argument("--encoder", help="faiss: the encoder's directory (e.g. a downloaded intfloat/e5-base-v2)")
    p.add_argument("--query-prefix", default="query: ", help="faiss: prefix of every query (E5: 'query: ')")
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean", help="faiss: the encoder's pooling")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.set_defaults(func=_retriever_serve)
    p = actions.add_parser("build", help="write a FAISS index (flat, inner product) and its corpus from any corpus file")
    p.add_argument("--corpus", required=True, help="corpus file (any layout `serve` reads)")
    p.add_argument("--encoder", required=True, help="the encoder's directory (Hugging Face model)")
    p.add_argument("--out", required=True, help="directory to write flat.index and corpus.jsonl into (must not exist)")
    p.add_argument("--passage-prefix", default="passage: ", help="prefix of every passage (E5: 'passage: ')")
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean", help="the encoder's pooling")
    p.set_defaults(func=_retriever_build)
    from memrl.cluster.submit import add_cli as add_cluster_cli

    add_cluster_cli(sub)

    p = sub.add_parser("eval", help="evaluate agents on an env (sweep composed objectives)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--agent", default="mem1,memsearcher,full_context", help="comma-separated agents")
    p.add_argument("--recipe", default=None, help="take env, agent budgets, turns and held-out seeds from a recipe")
    p.add_argument("--env", default=None, help="env id (default memrl/KBQA-v0 or the recipe's)")
    p.add_argument("--env-kwargs", default=None, help="JSON kwargs of the env (default {} or the recipe's)")
    p.add_argument("--objectives", default="1", help="comma-separated N, e.g. 1,2,4,8,16")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per turn (default 128 or the recipe's)")
    p.add_argument("--max-turns", type=int, default=None)
    p.add_argument("--held-out", choices=["confirm", "tune"], default=None,
                   help="held-out set (split eval): confirm (env.eval_seed_offset, reported results; default) or tune "
                        "(env.tune_seed_offset, for choosing settings)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="repetition penalty of the greedy episodes (default 1 = off, or the recipe's "
                        "train.eval_repetition_penalty)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sample the episodes at this temperature, each with its own seed (default 0 = greedy, or the "
                        "recipe's train.eval_temperature); a diagnostic: reported evals are greedy")
    p.add_argument("--out", default="runs/eval")
    p.set_defaults(func=_eval)
    p = sub.add_parser("bench", help="run a benchmark (prints a table and ratios vs a baseline)")
    p.add_argument("name", choices=BENCHES)
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (see its --help)")
    p.set_defaults(func=_bench)
    p = sub.add_parser("doctor", help="the checks a first GPU run must pass, in order (NCCL weight transfer, colocated "
                       "sleep / wake, one GRPO step of each paper recipe): memrl.cluster.acceptance")
    from memrl.cluster import acceptance

    acceptance.add_args(p)
    p.set_defaults(func=acceptance.main_args)
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model directory")
    p.add_argument("checkpoint", help="checkpoint dir, or a run dir (its newest intact checkpoint)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command line (`argv`, default `sys.argv[1:]`) and return its exit code.

    Logs at INFO (DEBUG with `-v`). A RecipeError or PlanError (a recipe that is invalid or cannot run)
    prints one `error:` line to stderr and returns 2 instead of a traceback. On the real command line
    (`argv` None) SIGTERM exits with 143 through the `finally` blocks, so engines are shut down as on Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    from memrl.plan import PlanError
    from memrl.recipes.schema import RecipeError

    if argv is None:  # the real command line: SIGTERM unwinds like Ctrl-C (finally blocks shut engines down;
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed vLLM owner orphans its EngineCore)
    try:
        return int(args.func(args) or 0)
    except (RecipeError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
