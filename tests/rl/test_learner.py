"""The DeepSpeed learner on a tiny model: parameters move, micro-batching is exact, NaN is skipped.

Device-agnostic: fp32 on CPU, bf16 on CUDA (`memrl.device`); tolerances and step sizes follow the dtype
(`memrl.testing.float_tolerance`, `visible_lr`)."""

import pytest
import torch

from memrl.records import Context, Trajectory
from memrl.rl.batching import micro_batches
from memrl.rl.learner import Learner, lr_at
from memrl.testing import float_tolerance, learner_sections, visible_lr, weight_tolerance


def _trajs(seed: int, advs=(1.0, -1.0)) -> list[Trajectory]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for adv in advs:
        ctxs = []
        for n in (14, 23, 9):
            ids = torch.randint(3, 250, (n,), generator=g).tolist()
            mask = [0] * 5 + [1] * (n - 5)
            ctxs.append(Context(ids, mask, [-5.5 if m else 0.0 for m in mask]))
        out.append(Trajectory(ctxs, reward=adv, advantage=adv))
    return out


@pytest.fixture(scope="module")
def make_learner():
    made = []

    def make(**kw):
        learner = Learner("tiny:0", **learner_sections(**{"zero_stage": 2, "lr": visible_lr(), **kw}), seed=0)
        made.append(learner)
        return learner

    return make


def test_lr_schedule_warms_up_linearly_then_stays():
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 3e-4, 0) == 3e-4


def test_micro_batches_respect_the_padded_token_budget_and_cover_every_context():
    lengths = [10, 50, 20, 35, 5, 50]
    batches = micro_batches(lengths, budget=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 100 or len(b) == 1


def test_grpo_step_moves_every_parameter(make_learner):
    learner = make_learner()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    m = learner.train_step(_trajs(0))
    after = learner.state_dict()
    assert m["skipped"] == 0.0 and m["train_tokens"] == 2 * (9 + 18 + 4)
    assert all(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("zero_stage", [2, 3])  # ZeRO 1-3 report the global grad norm
def test_micro_batching_gives_the_same_update_as_one_batch(make_learner, zero_stage):
    """ZeRO-3 once kept only the last micro-batch's gradients (see Learner._forward_prologue)."""
    a = make_learner(micro_batch_tokens=64, zero_stage=zero_stage)  # 3 micro-batches of <= 2 contexts
    b = make_learner(micro_batch_tokens=10_000, zero_stage=zero_stage)
    ma, mb = a.train_step(_trajs(1)), b.train_step(_trajs(1))
    assert ma["contexts"] == mb["contexts"] == 6
    tol = float_tolerance()
    assert abs(ma["pg_loss"] - mb["pg_loss"]) < tol * max(1.0, abs(mb["pg_loss"]))  # micro-batch losses add up
    assert mb["grad_norm"] > 0 and abs(ma["grad_norm"] - mb["grad_norm"]) < tol * mb["grad_norm"]


def test_nan_loss_skips_the_update_with_a_warning(make_learner, caplog):
    learner = make_learner()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    bad = _trajs(2, advs=(float("nan"), 1.0))
    m = learner.train_step(bad)
    assert m["skipped"] == 1.0
    assert "non-finite" in caplog.text
    after = learner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learner.train_step(_trajs(3))["skipped"] == 0.0  # training goes on afterwards


def test_sft_step_lowers_cross_entropy_on_the_masked_tokens(make_learner):
    learner = make_learner(zero_stage=1)
    trajs = _trajs(4)
    first = learner.train_step(trajs, sft=True, lr=3e-3)["sft_loss"]
    for _ in range(5):
        last = learner.train_step(trajs, sft=True, lr=3e-3)["sft_loss"]
    assert last < first - 0.5


def test_child_process_does_not_reuse_the_parents_rendezvous_port():
    """A `memrl train` started from a process that already has a solo world must pick its own port."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:  # the parent's TCP store, still listening
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(busy.getsockname()[1]), RANK="0",
                   WORLD_SIZE="1", LOCAL_RANK="0", MEMRL_SOLO_WORLD="1")
        code = "from memrl.rl.learner import init_distributed; init_distributed('gloo'); print('ok')"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_train_layers_updates_only_the_top_blocks_and_the_head(make_learner):
    learner = make_learner(train_layers=1, zero_stage=0)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    assert learner.train_step(_trajs(2))["skipped"] == 0.0
    moved = {k for k, v in learner.state_dict().items() if not torch.equal(before[k], v)}
    top = f"model.layers.{len(learner.module.model.layers) - 1}."
    assert moved and all(k.startswith(top) or k.startswith(("lm_head", "model.norm")) for k in moved)
    assert any(k.startswith(top) for k in moved) and "lm_head.weight" in moved


def test_logits_at_selected_positions_equal_the_full_forward():
    from memrl.models import load_model
    from memrl.rl.losses import predicting_positions
    from memrl.rl.prefix import logits_at

    model = load_model("tiny:0", dtype=torch.float32).eval()
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    sel = predicting_positions(torch.tensor([[0] * 6 + [1] * 6, [0] * 9 + [1] * 3]))
    with torch.no_grad():
        full = model(**inputs).logits
        part = logits_at(model, inputs, sel)
    assert part.shape == (int(sel.sum()), full.shape[-1])
    torch.testing.assert_close(part, full[sel], atol=1e-5, rtol=1e-5)


def test_weights_leave_the_learner_as_compact_tensors(make_learner):
    """ZeRO-2 parameters are views of one flat buffer; a returned view would carry the whole buffer (Ray pickles
    storages), so state_dict gives every tensor its own storage."""
    from safetensors.torch import load as load_blob

    learner = make_learner(zero_stage=2)
    weights = learner.state_dict()
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in weights.values())
    blob = load_blob(learner.weights_blob())
    assert set(blob) == set(weights) and all(torch.equal(blob[k], weights[k]) for k in weights)


def test_a_deepspeed_without_unmanaged_accumulation_is_refused(monkeypatch):
    """The installed DeepSpeed passes; one that lacks the key (an older release, which would keep only the last
    micro-batch's gradient under ZeRO-2) is refused at startup with the version to install."""
    from deepspeed.runtime import constants

    from memrl.rl.learner import DEEPSPEED_MIN, check_deepspeed

    check_deepspeed()
    monkeypatch.delattr(constants, "MANAGED_GRADIENT_ACCUMULATION")
    with pytest.raises(RuntimeError, match=f"needs deepspeed>={DEEPSPEED_MIN}"):
        check_deepspeed()


def _shared_prefix_trajs(seed: int) -> list[Trajectory]:
    """Contexts that all open with the same 24 tokens (a chat template and system prompt), as a memory agent's do."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, 250, (24,), generator=g).tolist()
    out = []
    for adv in (1.0, -1.0, 0.5):
        ctxs = []
        for n in (9, 17):
            ids = head + torch.randint(3, 250, (n,), generator=g).tolist()
            mask = [0] * (24 + 4) + [1] * (n - 4)
            ctxs.append(Context(ids, mask, [-5.5 if m else 0.0 for m in mask]))
        out.append(Trajectory(ctxs, reward=adv, advantage=adv))
    return out


def _first_step_grads(learner) -> tuple[dict[str, torch.Tensor], list]:
    """({name: summed gradient, fp32 on the CPU}, hook handles): hooks that add up each trained parameter's
    gradients until their handles are removed (after the next train_step, to keep that step's gradients)."""
    grads = {name: torch.zeros(p.shape) for name, p in learner.module.named_parameters() if p.requires_grad}
    handles = []

    def summed(name: str):
        def hook(g: torch.Tensor) -> None:  # must return None: a returned tensor would replace the gradient
            grads[name].add_(g.detach().float().cpu())
        return hook

    for name, p in learner.module.named_parameters():
        if p.requires_grad:
            handles.append(p.register_hook(summed(name)))
    return grads, handles


def test_shared_prefix_step_equals_the_full_forward_step(make_learner):
    """learner.shared_prefix (rl/prefix.py) changes how many tokens the decoder runs, not the update: the same loss,
    statistics, gradients and (fp32) weights as the full forward, step after step."""
    trajs = _shared_prefix_trajs(0)
    runs = []
    for share in (False, True):
        learner = make_learner(shared_prefix=share, kl_coef=0.1)
        assert learner.share_prefix is share
        before = learner.state_dict()
        grads, handles = _first_step_grads(learner)
        first = learner.train_step(trajs)
        for h in handles:
            h.remove()
        runs.append(([first, learner.train_step(trajs)], learner.state_dict(), grads))
    tol = float_tolerance()
    # bf16 (visible_lr 3e-2): Adam moves a weight whose first gradient is at float noise by up to lr, either way, so
    # the second step starts from weights that differ by more than bf16 noise: bf16 compares the first step only
    # (statistics and every parameter's gradient); fp32 also the second step's statistics and the weights
    steps = 2 if tol < 1e-4 else 1
    for a, b in list(zip(runs[0][0], runs[1][0], strict=True))[:steps]:
        for key in ("loss", "pg_loss", "approx_kl", "kl", "entropy", "grad_norm", "train_tokens"):
            assert b[key] == pytest.approx(a[key], rel=tol, abs=tol), key
    ga, gb = runs[0][2], runs[1][2]
    scale = max(float(g.abs().max()) for g in ga.values())
    assert scale > 1e-2  # the gradients compared are not all ~0
    # bf16 gradients carry 8 significant bits: a different summation order moves them by a few spacings of the
    # largest (bf16 weights on the CPU measured 2: 9.8e-4 at 0.104)
    bound = tol * scale if tol < 1e-4 else 4 * weight_tolerance() * scale
    assert max(float((ga[k] - gb[k]).abs().max()) for k in ga) <= bound
    if tol < 1e-4:
        # Adam divides each gradient by its own running magnitude, so a weight whose gradient is ~0 can move by up
        # to lr on a float-rounding difference in it: compare the two updates as a whole, not weight by weight
        update = torch.cat([(runs[0][1][k] - before[k]).flatten().float() for k in before])
        apart = torch.cat([(runs[1][1][k] - runs[0][1][k]).flatten().float() for k in before])
        assert update.norm() > 0 and apart.norm() < 0.01 * update.norm()


def test_shared_prefix_is_off_where_the_cache_or_the_collectives_forbid_it(make_learner):
    assert make_learner(zero_stage=3).share_prefix is False
    assert make_learner(gradient_checkpointing=True).share_prefix is False
