"""Which refiners exist: the one place that knows them by name.

Everything else (the command line's --refiner choices, output and record modes, A1111 pairs,
record summaries, sweeps) asks a refiner itself, found here. Adding a refiner is one module that
fills in `sampling.Refiner` (name, mode, stats, settings, a1111_pairs, sweepable) and one line below.
Importing this module loads no torch, so `diffier --help` can list the names.
"""

from __future__ import annotations

from diffier_cli.iec import IEC
from diffier_cli.refine import DiffIER
from diffier_cli.sampling import Refiner

REFINERS: dict[str, type] = {refiner.name: refiner for refiner in (DiffIER, IEC)}
DEFAULT = DiffIER.name
BASELINE = "baseline"  # the mode of a run without refinement


def run_mode(refiner: Refiner | None) -> str:
    """The mode that names outputs and records: baseline, or the refiner's (refined for DiffIER,
    iec for IEC), so that the runs of one seed can share a folder."""
    return BASELINE if refiner is None else refiner.mode


def settings(refiner: Refiner | None) -> dict | None:
    """What a record keeps of the refiner: its settings, or None for a baseline."""
    return None if refiner is None else refiner.settings()


def summarize(refiner: Refiner | None, per_step: dict) -> dict:
    """The few numbers a user reads first of one item's trajectory; empty for a baseline."""
    return refiner.stats.summarize(per_step) if refiner is not None and per_step else {}


def refinement(refiner: Refiner | None, chunks: list[dict]) -> dict:
    """A record's `refinement`, one layout in every command: `per_step`, one list per statistic with
    an entry per step the item took (its chunks' steps in order: one chunk for t2i, SR pixel tiles,
    TTS utterances), and the `summary` of them all; empty for a baseline."""
    per_step = {name: [value for chunk in chunks for value in chunk[name]] for name in chunks[0]} if chunks else {}
    return {"summary": summarize(refiner, per_step), "per_step": per_step}


def a1111_pairs(refiner_settings: dict | None, mode: str) -> dict[str, object]:
    """A record's refinement as A1111 `Key: value` pairs, its headline first: the refiner's own,
    or for a baseline `DiffIER: baseline`, the default refiner's headline switched off."""
    if refiner_settings is None:
        return {"DiffIER": mode}
    return REFINERS[refiner_settings["name"]].a1111_pairs(refiner_settings, mode)
