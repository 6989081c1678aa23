"""`diffier manifest`: one NDJSON listing of every output under some folders, and a completeness check.

Each output's record carries `job: {id, count, index}`, the same in every shard and restart of a
run, so the union of what all shards wrote can be checked against the item count without any
coordination between the processes that wrote it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from diffier_cli.errors import DiffierError, UsageError
from diffier_cli.metadata import read_record

OUTPUT_SUFFIXES = (".png", ".wav")


@dataclass
class JobAudit:
    command: str
    count: int
    indices: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.indices]

    @property
    def duplicated(self) -> list[int]:
        return sorted(i for i, paths in self.indices.items() if len(paths) > 1)


def output_files(roots: list[str]) -> Iterator[Path]:
    for root in map(Path, roots):
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from sorted(p for p in root.rglob("*") if p.suffix.lower() in OUTPUT_SUFFIXES and p.is_file() and not p.name.startswith("."))
        else:
            raise UsageError(f"no such file or folder: {root}")


def collect(roots: list[str]) -> tuple[list[dict], dict[str, JobAudit], list[str]]:
    """(manifest lines sorted by job and index, audits by job id, files without a diffier record)."""
    lines, audits, foreign = [], {}, []
    for path in output_files(roots):
        try:
            record = read_record(path)
        except DiffierError:
            foreign.append(str(path))
            continue
        if not isinstance(record, dict):  # an A1111 `parameters` text from another tool
            foreign.append(str(path))
            continue
        lines.append({"path": str(path), "record": record})
        job = record.get("job")
        if isinstance(job, dict) and {"id", "count", "index"} <= job.keys():
            audit = audits.setdefault(job["id"], JobAudit(record.get("command", "?"), job["count"]))
            audit.indices[job["index"]].append(str(path))
    lines.sort(key=lambda line: (str((line["record"].get("job") or {}).get("id", "")), (line["record"].get("job") or {}).get("index", -1), line["path"]))
    return lines, audits, foreign


def summary(audits: dict[str, JobAudit]) -> list[str]:
    """One line per job: complete, or which item indices are missing or written twice."""
    messages = []
    for job_id, audit in sorted(audits.items()):
        present = audit.count - len(audit.missing)
        line = f"job {job_id} ({audit.command}): {present} of {audit.count} item(s)"
        if audit.missing:
            shown = ", ".join(map(str, audit.missing[:20])) + (" ..." if len(audit.missing) > 20 else "")
            line += f"; missing {shown}"
        if audit.duplicated:
            line += f"; written more than once: {', '.join(map(str, audit.duplicated[:20]))}"
        messages.append(line)
    return messages


def to_ndjson(lines: list[dict]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
