"""MEM1 packed mode: all contexts of a trajectory in ONE sequence, one forward pass per trajectory.

A memory agent's trajectory is several short contexts that share a prefix (prompt, memory). Packing
them end to end saves padding and launches, but is only correct if every token sees exactly what it
saw at rollout time: its own context's earlier tokens, with positions counted from that context's
start. So the packed sequence gets

- `position_ids` restarting at 0 for each context (RoPE sees the per-context positions), and
- a 4D attention mask that is causal AND block-diagonal: token i attends to token j iff both lie in
  the same context and j <= i.

MEM1's released code got both wrong (positions ran over the whole packed sequence; the mask did
not match what rollout saw); `tests/rl/test_packing.py` checks that packed log-probs equal separate
per-context forwards, and that naive packing does not.

Attention implementations (transformers 5.x, `masking_utils.create_causal_mask`): a 4D mask is passed
through to the attention function untouched. `eager` *adds* it to the scores, so it must be additive
float (0 allowed, very negative forbidden) in the model's dtype; `sdpa` (the default) accepts either
that or a boolean mask (True = allowed). `pack_contexts` therefore builds an additive float mask in
`dtype` (default float32: pass the model's dtype for bf16 models), which works with both;
`dtype=torch.bool` gives a bool mask (sdpa only, 4x smaller than fp32). The mask is (L, L): for very
long packs prefer flash-attention kernels, which take the packing from `position_ids` alone (they
ignore 4D masks). Note that transformers also infers a block-diagonal mask from restarting
`position_ids` when `attention_mask` is None; the explicit mask does not depend on that inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    """One trajectory's contexts packed into a single sequence of length L = sum of context lengths."""

    input_ids: torch.Tensor  # (1, L) long: the contexts' token ids, end to end
    position_ids: torch.Tensor  # (1, L) long: 0..len_i-1 within each context
    attention_mask: torch.Tensor  # (1, 1, L, L): additive float (0 allowed, dtype min forbidden) or bool (True allowed)
    segments: list[tuple[int, int]]  # per context, [start, end) in the packed sequence

    @property
    def lengths(self) -> list[int]:
        return [e - s for s, e in self.segments]

    def to(self, device: torch.device | str) -> Packed:
        return Packed(self.input_ids.to(device), self.position_ids.to(device), self.attention_mask.to(device),
                      list(self.segments))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a Hugging Face causal LM forward: `model(**packed.model_inputs())`."""
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "attention_mask": self.attention_mask}


def block_causal_mask(lengths: list[int], dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """(1, 1, L, L) mask, causal within each block of `lengths`, no attention across blocks.

    Float dtypes: additive (0.0 where allowed, torch.finfo(dtype).min elsewhere); torch.bool: True where allowed.
    """
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                  torch.tensor(lengths, device=device))  # (L,) context index of each token
    L = seg.numel()
    causal = torch.ones((L, L), dtype=torch.bool, device=device).tril()
    allowed = causal & (seg[:, None] == seg[None, :])  # (L, L) query i may see key j
    if dtype == torch.bool:
        return allowed[None, None]
    mask = torch.zeros((L, L), dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def pack_contexts(contexts: list[list[int]], dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> Packed:
    """Pack contexts (lists of token ids, each non-empty) into one sequence; see the module docstring."""
    if not contexts:
        raise ValueError("pack_contexts needs at least one context")
    lengths = [len(c) for c in contexts]
    if min(lengths) == 0:
        raise ValueError(f"empty context in pack (lengths {lengths})")
    ids = torch.tensor([t for c in contexts for t in c], dtype=torch.long, device=device)[None]
    pos = torch.cat([torch.arange(n, dtype=torch.long, device=device) for n in lengths])[None]
    ends = torch.tensor(lengths).cumsum(0).tolist()
    segments = [(e - n, e) for n, e in zip(lengths, ends, strict=True)]
    return Packed(ids, pos, block_causal_mask(lengths, dtype, device), segments)
