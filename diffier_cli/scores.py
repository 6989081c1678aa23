"""What every `diffier eval` command ends with: a table of means on stderr and the rows as CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from diffier_cli.outputs import write_atomically


def mean(values: list[float]) -> float:
    """The arithmetic mean, exactly rounded; an inf (the PSNR of an exact reconstruction) stays inf."""
    return math.fsum(values) / len(values)


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
