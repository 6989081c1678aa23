"""What every `diffier eval` command ends with: a table of means on stderr and the rows as CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from diffier_cli.outputs import write_atomically


def compared_modes(refiner, tool: str) -> tuple[str, str]:
    """The two runs a comparison shows on the same seeds: the baseline and the refiner's mode
    ("refined" for DiffIER, "iec" for IEC), which also names their files and rows."""
    from diffier_cli.errors import UsageError
    from diffier_cli.refiners import run_mode

    if refiner is None:
        raise UsageError(f"{tool} compares the baseline with a refiner; drop --baseline / --refiner none")
    return "baseline", run_mode(refiner)


def mean(values: list[float]) -> float:
    """The arithmetic mean, exactly rounded; an inf (the PSNR of an exact reconstruction) stays inf."""
    return math.fsum(values) / len(values)


def print_json(record: dict) -> None:
    """One JSON line on stdout; an infinite score (PSNR of an exact match) is written as null,
    because bare `Infinity` is not JSON and strict parsers (jq) reject it."""
    import json

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, list):
            return [finite(item) for item in value]
        return value

    print(json.dumps(finite(record), ensure_ascii=False, allow_nan=False), flush=True)


def write_csv(rows: list[dict], path: Path, overwrite: bool) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically({path: buffer.getvalue().encode()}, overwrite)


def print_table(title: str, header: list[str], rows: list[list[str]], quiet: bool) -> None:
    """A rich table on stderr (plain text when stderr is not a terminal)."""
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(stderr=True).print(table)
