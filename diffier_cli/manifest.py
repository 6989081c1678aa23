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
from diffier_cli.limits import MAX_JOB_COUNT, MAX_LABEL_CHARS
from diffier_cli.embedded import NoRecord, read_record

OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".wav")  # every format t2i, sr and tts write

# Missing item indices a job's summary line names; the rest are counted.
SHOWN_MISSING = 20


@dataclass
class JobAudit:
    """What the files say about one job. Its cost is the files present, never the count a file
    claims: missing indices are counted and the first few found between the present ones."""

    command: str
    count: int
    first_path: str
    indices: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def missing_count(self) -> int:
        return self.count - len(self.indices)  # every index was checked to be in 0..count-1

    def first_missing(self, limit: int = SHOWN_MISSING) -> list[int]:
        """The lowest `limit` missing indices, from the gaps between the present ones."""
        shown: list[int] = []
        expected = 0
        for index in [*sorted(self.indices), self.count]:
            shown.extend(range(expected, min(index, expected + limit - len(shown))))
            if len(shown) >= limit:
                break
            expected = index + 1
        return shown

    @property
    def duplicated(self) -> list[int]:
        return sorted(i for i, paths in self.indices.items() if len(paths) > 1)


@dataclass
class Collected:
    """What `manifest` found: listed records, audits by job id, files that are not diffier's
    outputs (left out quietly) and files whose record could not be read or trusted ("PATH: why")."""

    lines: list[dict] = field(default_factory=list)
    audits: dict[str, JobAudit] = field(default_factory=dict)
    foreign: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def output_files(roots: list[str]) -> Iterator[Path]:
    for root in map(Path, roots):
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from sorted(p for p in root.rglob("*") if p.suffix.lower() in OUTPUT_SUFFIXES and p.is_file() and not p.name.startswith("."))
        else:
            raise UsageError(f"no such file or folder: {root}")


def _shown(value: object) -> str:
    """A value from a file, for a one-line message: JSON with every control character escaped,
    cut to 40 characters."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_label(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_LABEL_CHARS and value.isprintable()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def record_problem(record: dict) -> str | None:
    """Why the fields manifest relies on cannot be trusted, or None: `command` a short string,
    `seed` and `index` non-negative integers, and `job`, when present, {id, count, index}.
    Checked before any of them sizes, sorts or prints anything."""
    if "command" in record and not _is_label(record["command"]):
        return f"command {_shown(record['command'])} is not a name of 1..{MAX_LABEL_CHARS} printable characters"
    for key in ("seed", "index"):
        if key in record and not (_is_int(record[key]) and record[key] >= 0):
            return f"{key} {_shown(record[key])} is not a non-negative integer"
    if "job" in record:
        return _job_problem(record["job"])
    return None


def _job_problem(job: object) -> str | None:
    if not isinstance(job, dict):
        return f"job {_shown(job)} is not an object"
    job_id, count, index = job.get("id"), job.get("count"), job.get("index")
    if not _is_label(job_id):
        return f"job.id {_shown(job_id)} is not an id of 1..{MAX_LABEL_CHARS} printable characters"
    if not (_is_int(count) and 1 <= count <= MAX_JOB_COUNT):
        return f"job.count {_shown(count)} is not an integer in 1..{MAX_JOB_COUNT} (MAX_JOB_COUNT)"
    if not (_is_int(index) and 0 <= index < count):
        return f"job.index {_shown(index)} is not an integer in 0..{count - 1} (the job's count is {count})"
    return None


def _add_to_audit(found: Collected, path: Path, record: dict) -> str | None:
    """Count the file's item in its job's audit, or say why it cannot be (another count)."""
    job = record.get("job")
    if job is None:
        return None
    audit = found.audits.setdefault(job["id"], JobAudit(record.get("command", "?"), job["count"], str(path)))
    if job["count"] != audit.count:
        return f"job {job['id']} has count {job['count']} here but {audit.count} in {audit.first_path}"
    audit.indices[job["index"]].append(str(path))
    return None


def collect(roots: list[str]) -> Collected:
    """Every output under the roots: its record listed (sorted by job and index) and counted in its
    job's audit, or the file put among the foreign ones or the problems."""
    found = Collected()
    for path in output_files(roots):
        try:
            record = read_record(path)
        except NoRecord:
            found.foreign.append(str(path))
            continue
        except DiffierError as exc:  # its message is "PATH: why"
            found.problems.append(str(exc))
            continue
        problem = record_problem(record) or _add_to_audit(found, path, record)
        if problem:
            found.problems.append(f"{path}: {problem}")
            continue
        found.lines.append({"path": str(path), "record": record})
    found.lines.sort(key=lambda line: (line["record"].get("job", {}).get("id", ""), line["record"].get("job", {}).get("index", -1), line["path"]))
    return found


def summary(audits: dict[str, JobAudit]) -> list[str]:
    """One line per job: complete, or which item indices are missing or written twice."""
    messages = []
    for job_id, audit in sorted(audits.items()):
        line = f"job {job_id} ({audit.command}): {audit.count - audit.missing_count} of {audit.count} item(s)"
        if audit.missing_count:
            first = audit.first_missing()
            line += f"; missing {', '.join(map(str, first))}" + (" ..." if audit.missing_count > len(first) else "")
        if audit.duplicated:
            line += f"; written more than once: {', '.join(map(str, audit.duplicated[:SHOWN_MISSING]))}"
        messages.append(line)
    return messages


def to_ndjson(lines: list[dict]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
