"""The check behind the tests' float tolerances, and a log of how much of each bound is used.

`assert_within(actual, expected, atol=..., rtol=..., what=...)` passes when, elementwise and in
float64, |actual − expected| ≤ atol + rtol·|expected| (torch.testing's rule; NaN always fails).
Each call site says in a comment why its bound is what it is. Where both sides run the same
operations in the same order the tests compare exactly (torch.equal, ==) instead.

PyTorch picks CPU kernels by instruction set (ATEN_CPU_CAPABILITY=default|avx2|avx512) and by
thread count, and they sum in different orders, so a bound must hold for every one of them. To
see how close the checks come, run the `numerics` tests over that matrix with TOLERANCE_LOG=<file>
set (each check appends one JSON line), then `python -m tests.tolerance <file>...` prints per
check the worst difference, the same relative to max|expected|, and the largest fraction of its
bound used:

    for cap in default avx2 avx512; do for n in 1 2; do
      ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=$n TOLERANCE_LOG=tol.jsonl python -m pytest -q -m numerics
    done; done
    python -m tests.tolerance tol.jsonl
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

LOG = os.environ.get("TOLERANCE_LOG")  # not DIFFIER_*: conftest.py clears those for every test


def _float64(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    return torch.from_numpy(np.asarray(value, dtype=np.float64))


def _log(what: str, max_abs: float, used: float, atol: float, rtol: float, scale: float) -> None:
    if not LOG:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    record = {"test": test, "what": what, "max_abs": max_abs, "used": used, "atol": atol, "rtol": rtol, "scale": scale,
              "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    with open(LOG, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def assert_within(actual, expected, *, atol: float = 0.0, rtol: float = 0.0, what: str = "values") -> None:
    """Elementwise |actual − expected| ≤ atol + rtol·|expected| in float64, shapes equal."""
    a, e = _float64(actual), _float64(expected)
    atol, rtol = float(atol), float(rtol)  # a bound may be given as a 0-d tensor (k · max|expected|)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} against {tuple(e.shape)}"
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    inside = diff <= bound  # False for NaN
    max_abs = float(diff.max()) if diff.numel() else 0.0
    ratio = torch.where(diff == 0, torch.zeros_like(diff), diff / bound)  # inf where the bound is 0 and diff is not
    used = float(ratio.max()) if diff.numel() else 0.0
    _log(what, max_abs, used, atol, rtol, float(e.abs().max()) if e.numel() else 0.0)
    if not bool(inside.all()):
        flat = (~inside).flatten().nonzero()[0].item()
        index = tuple(int(i) for i in np.unravel_index(flat, tuple(a.shape))) if a.dim() else ()
        raise AssertionError(
            f"{what}: max |actual − expected| = {max_abs:.3g} against atol {atol:.3g} + rtol {rtol:.3g}·|expected| "
            f"({int((~inside).sum())} of {inside.numel()} outside; first at {index}: {a[index].item()!r} vs {e[index].item()!r})"
        )


def summarize(paths: list[str]) -> None:
    """Per (test, check), over all lines: the worst max |difference|, the same relative to max |expected|,
    the largest fraction of the bound used, and how many (capability, threads) cells were seen."""
    worst: dict[tuple[str, str], dict] = {}
    for path in paths:
        with open(path) as handle:
            for line in handle:
                r = json.loads(line)
                w = worst.setdefault((r["test"], r["what"]), {"max_abs": 0.0, "relative": 0.0, "used": 0.0, "cells": set()})
                w["max_abs"] = max(w["max_abs"], r["max_abs"])
                w["relative"] = max(w["relative"], r["max_abs"] / r["scale"] if r["scale"] else 0.0)
                w["used"] = max(w["used"], r["used"])
                w["cells"].add((r["capability"], r["threads"]))
    for (test, what), w in sorted(worst.items()):
        print(f"{test}\t{what}\tmax_abs={w['max_abs']:.3g}\trelative={w['relative']:.3g}\tused={w['used']:.3g}\tcells={len(w['cells'])}")


if __name__ == "__main__":
    summarize(sys.argv[1:])
