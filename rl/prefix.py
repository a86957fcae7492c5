"""The learner's forward: LM-head logits only where a loss token is predicted, and a shared prompt prefix run once.

Every context of a memory agent starts with the same tokens (the chat template and the agent's system prompt:
~100 of a memsearcher context's ~250 on the quickstart task), and the learner's padded micro-batch runs each row
through the whole decoder. `logits_at` finds the longest prefix every row of the micro-batch shares (`shared_prefix`),
runs the decoder on it once (one row, with gradients), repeats its key/value cache over the rows and runs only the
rest of each row on top of it. The result is the same function of the weights as one forward over the full rows (the
suffix attends to the same keys at the same positions; the prefix's gradient is the sum over rows that the full
forward also accumulates), computed on fewer tokens; tests/rl/test_prefix.py checks logits and gradients against the
full forward. Used only on padded 2-D batches (the packed layout has its own block mask) and not under activation
checkpointing (which turns the cache off) nor ZeRO-3 (whose forwards are collectives every rank must run equally
often; the caller decides: `Learner.share_prefix`, from `learner.shared_prefix`).
"""

from __future__ import annotations

import torch

MIN_PREFIX = 16  # shorter shared prefixes are not worth the second forward call


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, sel: torch.Tensor,
                  minimum: int = MIN_PREFIX) -> int:
    """P: how many leading tokens every row of (R,L) `input_ids` shares (all real tokens), capped so that no
    position in [0, P) predicts a loss token (`sel`, (R,L) bool) and at least one token is left per row; 0 when
    fewer than 2 rows or P < `minimum`."""
    R, L = input_ids.shape
    if R < 2 or L < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # (L,)
    P = L if bool(same.all()) else int((~same).nonzero()[0])
    hits = sel.any(0).nonzero()
    if len(hits):
        P = min(P, int(hits[0]))
    P = min(P, L - 1)
    return P if P >= minimum else 0


def decoder_states(decoder, inputs: dict[str, torch.Tensor], prefix: int) -> torch.Tensor:
    """The decoder's last hidden states (R, L - prefix, H) at positions prefix..L-1: one forward over the full rows
    when `prefix` is 0, else the shared prefix once and every row's rest on top of its repeated cache."""
    if prefix == 0:
        return decoder(**inputs, use_cache=False).last_hidden_state
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    head = decoder(input_ids=ids[:1, :prefix], use_cache=True)
    cache = head.past_key_values
    cache.batch_repeat_interleave(ids.shape[0])  # differentiable copies: each row's gradient flows into the prefix
    return decoder(input_ids=ids[:, prefix:], attention_mask=attn, past_key_values=cache,
                   use_cache=True).last_hidden_state


def logits_at(model, inputs: dict[str, torch.Tensor], sel: torch.Tensor, share: bool = True) -> torch.Tensor:
    """LM-head logits (M,V) at the positions `sel` (R,L) only: the decoder runs on every token (a shared prefix
    once, when `share` and the batch is a padded 2-D one), the vocabulary projection only where a loss token is
    predicted (like TRL's `logits_to_keep`, but per row): the (positions, V) logits are the largest tensor."""
    plain_2d = inputs["attention_mask"].dim() == 2 and "position_ids" not in inputs
    P = shared_prefix(inputs["input_ids"], inputs["attention_mask"], sel) if share and plain_2d else 0
    hidden = decoder_states(model.get_decoder(), inputs, P)
    return model.get_output_embeddings()(hidden[sel[:, P:]])
