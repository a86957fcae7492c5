"""The `memrl` command line. Each subcommand is a small function; heavy imports happen inside it."""

from __future__ import annotations

import argparse
import logging
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


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
