import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from memrl.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def _subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


def test_every_command_has_help(capsys):
    paths = list(_subcommand_paths(build_parser()))
    assert ("model", "prepare") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0
        assert "usage: memrl" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("memrl ")


def test_model_prepare_prints_a_loadable_directory(capsys):
    assert main(["model", "prepare", "tiny:0"]) == 0
    assert (Path(capsys.readouterr().out.strip()) / "config.json").is_file()


@pytest.mark.slow
def test_built_wheel_installs_in_a_fresh_venv_and_runs_help(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(ROOT)], check=True)
    wheel = next(dist.glob("memrl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("memrl/cli.py", "memrl/envs/__init__.py", "memrl/agents/__init__.py", "memrl/rl/__init__.py"):
        assert module in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-deps: this checks the wheel's layout and entry point, not a multi-GB dependency download
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    out = subprocess.run([venv / "bin" / "memrl", "--help"], check=True, capture_output=True, text=True)
    assert "usage: memrl" in out.stdout


def test_eval_flags_are_checked_by_the_recipe_schema(capsys):
    """`memrl eval`'s flags update the recipe past pydantic's validation; they are checked again, naming the key."""
    from memrl.cli import main

    assert main(["eval", "--recipe", "quickstart", "--temperature", "-1", "--out", "unused"]) == 2
    assert "train.eval_temperature: Input should be greater than or equal to 0 (got -1.0)" in capsys.readouterr().err
    assert main(["eval", "--recipe", "quickstart", "--repetition-penalty", "0.5", "--out", "unused"]) == 2
    assert "train.eval_repetition_penalty" in capsys.readouterr().err


def test_every_shipped_recipe_survives_revalidation_unchanged():
    from memrl.recipes.schema import load_recipe, revalidate, shipped_recipes

    for name in shipped_recipes():
        recipe = load_recipe(name)
        assert revalidate(recipe, name) == recipe, name
