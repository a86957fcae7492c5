"""memrl: train LLM agents with RL to keep a compact memory state instead of a growing context."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memrl")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+local"
