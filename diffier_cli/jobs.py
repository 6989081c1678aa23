"""Runs over many work items: sharding, resuming, failures and Ctrl-C, the same for every command.

Every item has a global index fixed by the input alone (line of the prompts file, position of
the image in the sorted input list). Names, seeds, the shard an item falls in and whether it is
already done all derive from that index, so any split of a run into shards, batches or restarts
writes the same files as one uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from diffier_cli.errors import DiffierError, ExitCode, UsageError, as_diffier_error
from diffier_cli.outputs import plan_outputs, preflight, remove_stale_parts

# Launchers that start one process per shard: (rank, world size, local rank) variables.
LAUNCHER_VARIABLES = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),  # torchrun, accelerate launch, deepspeed
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),  # srun
    ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", None),  # sbatch --array (offset by SLURM_ARRAY_TASK_MIN)
)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: a contiguous run of global indices (`divmod`, no padding)."""

    index: int
    count: int
    source: str  # where it came from, for messages: "--shard", "RANK/WORLD_SIZE", ...
    local_rank: int | None = None  # the process's GPU slot on its node, when a launcher says

    def select(self, total: int) -> range:
        # The first total % count shards get one extra item, as accelerate's split_between_processes.
        base, extra = divmod(total, self.count)
        start = self.index * base + min(self.index, extra)
        return range(start, start + base + (self.index < extra))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, source: str = "--shard") -> Shard:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"{source} {text} is not K/N (e.g. --shard 0/4 for the first of four)") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"{source} {text}: need 0 <= K < N (shards are numbered from 0)")
    return Shard(index, count, source)


def resolve_shard(explicit: str | None, environ: Mapping[str, str] = os.environ) -> Shard:
    """--shard K/N, else the first launcher that started more than one process, else the whole run.

    Inside an sbatch array every task also sees SLURM_PROCID=0 of SLURM_NTASKS=1, hence "more than one".
    """
    for rank_var, size_var, local_var in LAUNCHER_VARIABLES:
        size = environ.get(size_var, "")
        if rank_var not in environ or not size.isdigit() or int(size) < 2:
            continue
        local = environ.get(local_var, "") if local_var else ""
        local_rank = int(local) if local.isdigit() else None
        if explicit is not None:
            return replace(parse_shard(explicit), local_rank=local_rank)
        rank = environ[rank_var]
        if rank_var == "SLURM_ARRAY_TASK_ID" and rank.isdigit():
            rank = str(int(rank) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0))
        return replace(parse_shard(f"{rank}/{size}", f"{rank_var}/{size_var}"), local_rank=local_rank)
    return parse_shard(explicit) if explicit is not None else Shard(0, 1, "default")


def job_id(command: str, inputs: Sequence[object], settings: Mapping[str, object]) -> str:
    """A short digest of what a run makes, the same in every shard and restart, so `diffier
    manifest` can tell which outputs belong together."""
    text = json.dumps({"command": command, "inputs": list(inputs), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Planned:
    """One item this process will make: its fields and the files it writes."""

    item: dict
    paths: list[Path]


@dataclass
class Plan:
    pending: list[Planned]
    total: int
    shard: Shard
    skipped: int


def plan_job(
    items: list[dict],
    *,
    output: str | None,
    name: str | None,
    default_name: str,
    shard: Shard,
    skip_existing: bool,
    overwrite: bool,
    companions: Callable[[Path], list[Path]] = lambda path: [],
) -> Plan:
    """Names for all items, then this shard's part, minus what exists (with --skip-existing);
    checks the rest for clobbering before any model loads."""
    if skip_existing and overwrite:
        raise UsageError("--skip-existing keeps existing outputs and --overwrite replaces them; choose one")
    paths = plan_outputs(output, items, default_name, name)
    mine = shard.select(len(items))
    pending, skipped = [], 0
    for index in mine:
        files = [paths[index], *companions(paths[index])]
        if skip_existing and all(path.is_file() for path in files):
            skipped += 1
            continue
        pending.append(Planned(items[index], files))
    preflight([path for planned in pending for path in planned.paths], overwrite)
    for planned in pending:
        for path in planned.paths:
            remove_stale_parts(path)
    return Plan(pending=pending, total=len(items), shard=shard, skipped=skipped)


class PartialFailure(DiffierError):
    def __init__(self, message: str):
        super().__init__(message, ExitCode.PARTIAL)


class Interrupted(DiffierError):
    def __init__(self, message: str):
        super().__init__(message, ExitCode.INTERRUPTED)


@dataclass
class JobRun:
    """Reports and counts outcomes; with --keep-going turns an item's failure into a record."""

    plan: Plan
    reporter: object
    json_lines: bool
    keep_going: bool
    name_single_item: bool = False  # put the item's label on a failure even when it is the only item
    written: int = 0
    failures: list[tuple[dict, str]] = field(default_factory=list)
    _stop_requested: bool = False

    def announce(self) -> None:
        """Say what this process will make, unless the run is a single item made from scratch."""
        plan = self.plan
        if plan.total == 1 and not plan.skipped:
            return
        shard = "" if plan.shard.count == 1 else f" (shard {plan.shard}, from {plan.shard.source})"
        skipped = f", {plan.skipped} already done" if plan.skipped else ""
        self.reporter.message(f"{len(plan.pending)} of {plan.total} item(s) to make{shard}{skipped}")

    @contextmanager
    def running(self) -> Iterator[None]:
        """The first Ctrl-C lets the current item finish, then stops; a second stops at once."""
        if not _in_main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.reporter.message("stopping after the current item (Ctrl-C again to stop now)")

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def batches(self, size: int) -> Iterator[list[Planned]]:
        pending = self.plan.pending
        for start in range(0, len(pending), size):
            if self._stop_requested:
                done = self.written + len(self.failures)
                raise Interrupted(
                    f"interrupted after {done} of {len(pending)} item(s); rerun the same command with "
                    "--skip-existing to resume"
                )
            yield pending[start : start + size]

    @contextmanager
    def attempt(self, batch: list[Planned], label: Callable[[dict], str]) -> Iterator[None]:
        """Run one batch; a failure stops the run with its own code, or with --keep-going is
        reported (stderr line, and a `--json` record with "error") and the run goes on."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - sorted below: user-facing failures or bugs
            error = exc if isinstance(exc, DiffierError) else as_diffier_error(exc)
            if error is None:
                raise
            if error.code == ExitCode.OUT_OF_MEMORY:
                _release_cached_memory()
            where = ", ".join(label(planned.item) for planned in batch)
            if not self.keep_going:
                if self.plan.total > 1 or self.name_single_item:  # say which item, then stop with its own code
                    raise DiffierError(f"{where}: {error}", error.code) from exc
                if error is exc:
                    raise
                raise error from exc
            for planned in batch:
                self.failures.append((planned.item, str(error)))
                self.reporter.message(f"failed: {label(planned.item)}: {error}")
                if self.json_lines:
                    record = {"index": planned.item["index"], "input": label(planned.item), "error": str(error), "exit_code": int(error.code)}
                    print(json.dumps(record, ensure_ascii=False), flush=True)

    def wrote(self) -> None:
        self.written += 1

    def finish(self, label: Callable[[dict], str]) -> None:
        if not self.failures:
            return
        listed = "; ".join(f"{label(item)}: {message}" for item, message in self.failures[:10])
        more = f"; and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
        raise PartialFailure(
            f"{len(self.failures)} of {len(self.plan.pending)} item(s) failed ({self.written} written): {listed}{more}"
        )


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _release_cached_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
