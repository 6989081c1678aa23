"""Batch-invariant execution: an item's numbers do not depend on what else is in its batch.

PyTorch's kernels pick their blocking, vectorisation and memory layout from the whole tensor's
shape, so the same image computed alone or beside three others differs in the last float bits
(oneDNN convolutions, GroupNorm over a channels-last view, MKL's small-M GEMM path; cuDNN and
cuBLAS choose by shape in the same way), and 50 sampling steps carry that to ±1/255 in pixels.
Inside `batch_invariant()` the few operators that mix the batch into their arithmetic run with a
shape that is the same whatever the batch:

- convolutions, GroupNorm, attention and the transcendental activations (SiLU, GELU, sigmoid,
  tanh, whose CPU kernels split work into threads and SIMD vectors by the tensor's total size):
  one sample at a time, each made contiguous first;
- `F.linear`: rows in fixed blocks of `GEMM_ROWS`, the last one zero-padded, so every GEMM call
  has one shape and a row's result depends on that row alone.

Everything else PyTorch computes element- or row-wise already. The cost is measured in
`benchmarks/batch_throughput.py`. The result still depends on the hardware, the library versions
and the intra-op thread count (reductions split across threads).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

GEMM_ROWS = 256

# Operator → (how many leading positional arguments carry the batch, their rank when batched).
PER_SAMPLE = {
    F.conv1d: (1, 3),
    F.conv2d: (1, 4),
    F.conv3d: (1, 5),
    F.conv_transpose1d: (1, 3),
    F.conv_transpose2d: (1, 4),
    F.group_norm: (1, 2),
    F.scaled_dot_product_attention: (3, 3),  # query, key, value
    # Transcendental activations: the CPU kernels split a tensor into thread chunks and SIMD
    # vectors by its total size, and the scalar tail of a chunk rounds unlike the vector body.
    F.silu: (1, 2),
    F.gelu: (1, 2),
    F.mish: (1, 2),
    torch.sigmoid: (1, 2),
    torch.tanh: (1, 2),
}


def _per_sample(func, batched: int, args: tuple, kwargs: dict) -> torch.Tensor:
    """func on each item alone. Only what carries the batch is sliced: a leading argument or an
    attention mask of the query's rank with the batch's length; broadcast keys (batch 1) and
    broadcast masks pass whole, as they would to the batched call."""
    first = args[0]
    n = first.shape[0]

    def item(value, i):
        if isinstance(value, torch.Tensor) and value.dim() == first.dim() and value.shape[0] == n:
            return value[i : i + 1].contiguous()
        return value

    outputs = []
    for i in range(n):
        leading = [item(value, i) for value in args[:batched]]
        rest = [item(value, i) for value in args[batched:]] if func is F.scaled_dot_product_attention else args[batched:]
        mask = {"attn_mask": item(kwargs["attn_mask"], i)} if "attn_mask" in kwargs else {}
        outputs.append(func(*leading, *rest, **{**kwargs, **mask}))
    return torch.cat(outputs)


def _fixed_shape_linear(x: torch.Tensor, *rest, **kwargs) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    m = rows.shape[0]
    if m % GEMM_ROWS:
        rows = torch.cat([rows, rows.new_zeros(GEMM_ROWS - m % GEMM_ROWS, rows.shape[1])])
    out = torch.cat([F.linear(block, *rest, **kwargs) for block in rows.split(GEMM_ROWS)])[:m]
    return out.reshape(*x.shape[:-1], out.shape[-1])


IN_PLACE_CAPABLE = (F.silu, F.mish)


class _BatchInvariantMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        batched, rank = PER_SAMPLE.get(func, (0, 0))
        positional_tensor = bool(args) and isinstance(args[0], torch.Tensor)
        in_place = func in IN_PLACE_CAPABLE and (kwargs.get("inplace") or args[1:2] == (True,))
        if batched and positional_tensor and args[0].dim() >= rank and not in_place:
            return _per_sample(func, batched, args, kwargs)
        if func is F.linear and positional_tensor:
            return _fixed_shape_linear(*args, **kwargs)
        return func(*args, **kwargs)  # anything else, and calls in forms the rewrites do not cover


@contextmanager
def batch_invariant(enabled: bool = True) -> Iterator[None]:
    """Run the enclosed model calls batch-invariantly (or normally when not `enabled`)."""
    if not enabled:
        yield
        return
    with _BatchInvariantMode():
        yield
