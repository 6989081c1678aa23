"""Device and dtype choice, the per-item random generators, and what the user sees while it runs."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from diffier_cli.errors import UsageError, one_line

@dataclass(frozen=True, kw_only=True)
class Hardware:
    """Where a model runs and where its weights come from, for every command that loads one."""

    offline: bool = False
    cache_dir: str | None = None
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What every run takes besides its inputs and its model's settings: randomness and outputs."""

    seed: int | None = None  # None: a fresh random seed, printed and stored
    output: str | None = None
    overwrite: bool = False
    json: bool = False
    quiet: bool = False
    record_paths: bool = False  # --record-paths: local model files' absolute paths in the records


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """How a run of many items is named, split and resumed (t2i, sr, tts)."""

    name: str | None = None  # --name: the file-name template inside the -o folder
    skip_existing: bool = False
    keep_going: bool = False
    shard: str | None = None  # --shard K/N; None = from the launcher's environment, else the whole run


@dataclass(frozen=True, kw_only=True)
class ImageOutputOptions:
    """The file format of the images a run writes (t2i, sr): formats.choose reads them with -o and --name."""

    image_format: str | None = None  # --format; None = -o's or --name's extension, else png
    quality: int | None = None  # None = formats.DEFAULT_QUALITY for JPEG and lossy WebP
    lossless: bool = False  # WebP's lossless mode


# Refinement draws come from a second generator per item, seeded seed ^ REFINE_SEED_MIX: with the
# same seed as the initial-noise generator, a CPU run would refine with a copy of x_T's numbers.
# XOR is a bijection, so distinct item seeds keep distinct refinement streams.
REFINE_SEED_MIX = 0x1E37_79B9_7F4A_7C15  # < 2**63, far above any 32-bit seed


def require(*modules: str, purpose: str, extra: str) -> None:
    """Optional dependencies present, or a one-line usage error naming the extra that installs them."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"{purpose} needs {' and '.join(missing)}; pip install 'diffier[{extra}]'")


def quiet_libraries(show_downloads: bool) -> None:
    """Silence the libraries' own bars and chatter; diffier reports progress itself.

    Hub download bars stay on a terminal (a first 5 GB download deserves one) unless --quiet.
    """
    import os
    import warnings

    if not show_downloads:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|transformers)\.")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def resolve_device(name: str, local_rank: int | None = None):
    """The torch device for --device; `local_rank` (from torchrun, accelerate or srun) picks the
    process's own GPU when the device is 'auto' or 'cuda' without an index."""
    import torch

    if local_rank is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise UsageError(f"--device {name} is not supported; use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} but torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name} but MPS is not available here; use --device cpu")
    return device


SEED_LIMIT = 2**32


def choose_seed(seed: int | None) -> int:
    """The user's seed, or a fresh random one (always printed and stored by the caller)."""
    import secrets

    return seed if seed is not None else secrets.randbelow(SEED_LIMIT)


def resolve_dtype(name: str, device, low_precision_on_cuda: bool = True):
    """auto: float16 on CUDA where the model is large enough to gain from it, float32 elsewhere
    (CPU float16 is slow)."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" and low_precision_on_cuda else torch.float32
    return getattr(torch, name)


def item_generators(seeds: list[int], device) -> tuple[list, list]:
    """(initial-noise generators on the CPU, refinement generators on the model's device), one per item.

    Initial noise is drawn on the CPU so a seed gives the same x_T on any hardware (A1111's
    'RNG: CPU'); refinement draws stay on the device so the loop never waits on a host copy.
    """
    import torch

    noise = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    refine = [torch.Generator(device).manual_seed(seed ^ REFINE_SEED_MIX) for seed in seeds]
    return noise, refine


class Reporter:
    """Messages on stderr; a rich progress bar only when stderr is a terminal."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.interactive = sys.stderr.isatty() and not quiet
        self._progress = None
        self._task = None

    def message(self, text: str) -> None:
        """One line on stderr (above the bar when one is shown), unless --quiet."""
        if self.quiet:
            return
        text = one_line(text)
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[None]:
        """A rich progress bar of `total` steps while the block runs, on a terminal only."""
        if not self.interactive:
            yield
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            self._progress = progress
            self._task = progress.add_task(description, total=total)
            try:
                yield
            finally:
                self._progress = None
                self._task = None

    def advance(self, steps: int = 1) -> None:
        """Move the bar on by `steps` (nothing without a bar)."""
        if self._progress is not None:
            self._progress.advance(self._task, steps)
