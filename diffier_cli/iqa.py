"""The image-quality metrics of the paper's SR table, from the libraries that define them.

PSNR is RGB in [0, 1] over the whole image, as pyiqa's `psnr` at its defaults.
LPIPS, MUSIQ and CLIP-IQA come from pyiqa, the toolbox StableSR's evaluation uses, so scores are
comparable with published tables; pyiqa is an optional extra because it brings torchvision and
downloads each metric's weights on first use.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from typing import Callable, Iterator

from diffier_cli.errors import UsageError
from models.errors import ModelUnavailable, first_line


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool
    full_reference: bool  # compares against the HR image; otherwise scores the output alone

    @property
    def heading(self) -> str:
        return f"{self.label} {'↑' if self.higher_is_better else '↓'}"


METRICS = {m.name: m for m in (
    Metric("psnr", "PSNR", True, True),
    Metric("lpips", "LPIPS", False, True),
    Metric("musiq", "MUSIQ", True, False),
    Metric("clipiqa", "CLIP-IQA", True, False),
)}


def parse_metrics(text: str) -> list[Metric]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise UsageError(f"--metrics {text}: choose from {','.join(METRICS)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--metrics {text} repeats a metric")
    return [METRICS[name] for name in names]


def psnr(output, reference) -> float:
    """PSNR in dB of two images (tensors in [0, 1]): 10·log10(1 / MSE), inf when they are equal.

    Computed in float64 so a known MSE gives its PSNR exactly; torchmetrics' version divides by a
    float32 ln 10 and is off by ~1e-6 dB, and this one-line definition is not worth its dependency."""
    import math

    mse = float((output.double() - reference.double()).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


Scorer = Callable[..., float]  # (output, reference) for full-reference metrics, (output,) otherwise


PYIQA_CACHES = "~/.cache/torch/hub/pyiqa, ~/.cache/torch/hub/checkpoints (torchvision backbones) and ~/.cache/clip"


@contextmanager
def no_network(enabled: bool) -> Iterator[None]:
    """Refuse every outgoing connection while pyiqa builds its metrics: it downloads weights with
    urllib (torch.hub, OpenAI CLIP), which no library's offline switch reaches."""
    if not enabled:
        yield
        return
    import socket

    connect = socket.socket.connect

    def refuse(sock, address):
        raise ConnectionRefusedError(f"--offline: no connection to {address}")

    socket.socket.connect = refuse
    try:
        yield
    finally:
        socket.socket.connect = connect


def load_scorers(metrics: list[Metric], device, offline: bool) -> dict[str, Scorer]:
    """One scorer per metric; pyiqa's are built (and their weights fetched) here, before any work."""
    scorers: dict[str, Scorer] = {"psnr": psnr} if any(m.name == "psnr" for m in metrics) else {}
    learned = [m for m in metrics if m.name != "psnr"]
    if not learned:
        return scorers
    names = ", ".join(m.label for m in learned)
    try:
        import pyiqa
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision's operator errors against a mismatched torch
        raise UsageError(f"{names} need pyiqa ({first_line(exc)}); pip install 'diffier[iqa]', or pass --metrics psnr") from exc
    for metric in learned:
        try:
            with no_network(offline), redirect_stdout(sys.stderr):  # pyiqa prints its loading messages
                model = pyiqa.create_metric(metric.name, device=device, as_loss=False)
        except ImportError as exc:  # e.g. openai-clip (clipiqa) needs pkg_resources, gone from setuptools 82
            raise UsageError(f"pyiqa's {metric.name} cannot import {exc.name or first_line(exc)}; pip install 'diffier[iqa]' "
                             "(it pins setuptools<82 for pkg_resources)") from exc
        except Exception as exc:  # noqa: BLE001 - any other failure to build a metric means: its weights are unavailable
            where = "are not in the caches (--offline)" if offline else "cannot be had"
            raise ModelUnavailable(
                f"pyiqa's {metric.name} weights {where}: {first_line(exc)} [{type(exc).__name__}]; run once with network "
                f"access (pyiqa caches them in {PYIQA_CACHES}) or leave it out of --metrics"
            ) from exc
        scorers[metric.name] = _pyiqa_scorer(model)
    return scorers


def _pyiqa_scorer(model) -> Scorer:
    """pyiqa metrics take (distorted, reference) NCHW RGB in [0, 1] and return a (N,) or (N, 1) tensor."""

    def score(output, reference=None) -> float:
        with redirect_stdout(sys.stderr):
            value = model(output) if reference is None else model(output, reference)
        return float(value.reshape(-1)[0])

    return score
