"""Batch-invariant execution: a batch of B items computes exactly what B one-item runs compute.

PyTorch's kernels pick their blocking, vectorisation and memory layout from the whole tensor's
shape, so the same image computed alone or beside three others differs in the last float bits
(oneDNN convolutions, GroupNorm over a channels-last view, MKL's small-M GEMM path, the SIMD tail
of SiLU/GELU; cuDNN and cuBLAS choose by shape in the same way), and 50 sampling steps carry that
to ±1/255 in pixels. Inside `batch_invariant(B)` every operator whose kernel depends on the
batch runs once per item, on the item's own contiguous slice of the batch dimension, which is the
exact shape a one-item run gives it (two rows per item for a guided UNet, whose batch is laid
out item by item, [uncond₀, cond₀, uncond₁, cond₁, ...]), made contiguous (kernels also choose
by memory layout). So its kernel and its numbers are those of a one-item run in the same mode:
`--batch-size 1` and `--batch-size 4` agree bit for bit. With B = 1 nothing is split; only the
contiguous copies and the dispatch through this mode remain.

Element-wise +, −, ×, ÷ and √ are exactly rounded in any order, and row-wise reductions treat each
row alone, so they need no splitting. What still changes bits: the hardware, library versions and
the intra-op thread count. Batching then saves little (each kernel still sees one item's shape);
`benchmarks/invariant_cost.py` measures it, and `--no-batch-invariant` is the fast path.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# Operators whose kernel depends on the batch → how many leading positional arguments carry it.
PER_ITEM = {
    F.conv1d: 1,
    F.conv2d: 1,
    F.conv3d: 1,
    F.conv_transpose1d: 1,
    F.conv_transpose2d: 1,
    F.linear: 1,
    F.group_norm: 1,
    F.layer_norm: 1,
    F.scaled_dot_product_attention: 3,  # query, key, value
    torch.bmm: 2,
    torch.baddbmm: 3,
    # Transcendental activations: the CPU kernels split a tensor into thread chunks and SIMD
    # vectors by its total size, and the scalar tail of a chunk rounds unlike the vector body.
    F.silu: 1,
    F.gelu: 1,
    F.mish: 1,
    torch.sigmoid: 1,
    torch.tanh: 1,
    torch.sin: 1,  # sinusoidal time embeddings
    torch.cos: 1,
}
IN_PLACE_CAPABLE = (F.silu, F.mish)


class _PerItemMode(TorchFunctionMode):
    def __init__(self, items: int):
        super().__init__()
        self.items = items

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leading = PER_ITEM.get(func, 0)
        first = args[0] if args else None
        if (
            leading
            and isinstance(first, torch.Tensor)
            and first.dim() >= 2
            and first.shape[0] % self.items == 0
            and not (func in IN_PLACE_CAPABLE and (kwargs.get("inplace") or args[1:2] == (True,)))
        ):
            return self._per_item(func, leading, args, kwargs)
        return func(*args, **kwargs)  # anything else, and calls in forms the split does not cover

    def _per_item(self, func, leading: int, args: tuple, kwargs: dict) -> torch.Tensor:
        """func on each item's slice. Only what carries the batch is sliced: a leading argument, or
        an attention mask of the query's rank, with the batch's length; broadcast keys (length 1)
        and broadcast masks pass whole, as they would to the batched call."""
        first = args[0]
        n = first.shape[0]
        size = n // self.items

        def part(value, i):
            if isinstance(value, torch.Tensor) and value.dim() == first.dim() and value.shape[0] == n:
                # contiguous in every run alike: kernels choose their path by the memory layout too,
                # and the layout of a one-item view is not the layout of a one-item tensor
                return value[i * size : (i + 1) * size].contiguous()
            return value

        outputs = []
        for i in range(self.items):
            head = [part(value, i) for value in args[:leading]]
            tail = [part(value, i) for value in args[leading:]] if func is F.scaled_dot_product_attention else args[leading:]
            mask = {"attn_mask": part(kwargs["attn_mask"], i)} if "attn_mask" in kwargs else {}
            outputs.append(func(*head, *tail, **{**kwargs, **mask}))
        return torch.cat(outputs)


@contextmanager
def batch_invariant(items: int, enabled: bool) -> Iterator[None]:
    """Run the enclosed model calls on a batch of `items` items as `items` one-item runs would.

    Every batched tensor inside must be laid out item by item along its first dimension."""
    if not enabled:
        yield
        return
    with _PerItemMode(items):
        yield
