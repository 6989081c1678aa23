"""Runs over many work items: sharding, resuming, failures and Ctrl-C, the same for every command.

Every item has a global index fixed by the input alone (line of the prompts file, position of
the image in the sorted input list). Names, seeds, the shard an item falls in and whether it is
already done all derive from that index, so any split of a run into shards, batches or restarts
writes the same files as one uninterrupted run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from diffier_cli.errors import DiffierError, ExitCode, UsageError, as_diffier_error, excerpt
from diffier_cli.limits import MAX_ITEMS
from diffier_cli.outputs import plan_outputs, preflight, remove_stale_parts


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: a contiguous run of global indices (`divmod`, no padding)."""

    index: int
    count: int
    source: str  # where it came from, for messages: "--shard", "RANK/WORLD_SIZE", ...
    local_rank: int | None = None  # the process's GPU slot on its node, when a launcher says

    def select(self, total: int) -> range:
        """The global indices of this shard's items, out of `total`."""
        # The first total % count shards get one extra item, as accelerate's split_between_processes.
        base, extra = divmod(total, self.count)
        start = self.index * base + min(self.index, extra)
        return range(start, start + base + (self.index < extra))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, source: str = "--shard") -> Shard:
    """K/N as a Shard; `source` names where it came from in the one-line error."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"{source} {text} is not K/N (e.g. --shard 0/4 for the first of four)") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"{source} {text}: need 0 <= K < N (shards are numbered from 0)")
    return Shard(index, count, source)


def _number(environ: Mapping[str, str], name: str) -> int | None:
    """A launcher variable as a whole number, None when unset; anything else is refused, since a
    process that misread its share would silently make the whole job."""
    value = environ.get(name, "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise UsageError(f"the environment sets {name}={excerpt(value, 20)}, not a whole number; fix or unset it, or pass --shard K/N")
    if len(value) > 9:
        raise UsageError(f"the environment sets {name}={excerpt(value, 20)}, too large for a process count; fix or unset it, or pass --shard K/N")
    return int(value)


def _pair(environ: Mapping[str, str], index: str, count: str) -> tuple[int, int] | None:
    """(index, count) from a launcher's pair of variables when the count says several processes,
    None when there is one; an index missing beside such a count is refused, not taken as 0."""
    total = _count(environ, count)
    if total <= 1:
        return None
    if _number(environ, index) is None:
        raise UsageError(f"the environment sets {count}={total} but not {index}; launchers set both: set {index}, "
                         f"unset {count}, or pass --shard K/N")
    return _count(environ, index), total


def _count(environ: Mapping[str, str], name: str) -> int:
    return _number(environ, name) or 0


def resolve_shard(explicit: str | None, environ: Mapping[str, str] = os.environ) -> Shard:
    """--shard K/N, else the launcher's variables, else the whole run.

    torchrun and `accelerate launch` set RANK/WORLD_SIZE; srun sets SLURM_PROCID/SLURM_NTASKS; an
    sbatch array sets SLURM_ARRAY_TASK_ID (from SLURM_ARRAY_TASK_MIN, every SLURM_ARRAY_TASK_STEP)
    and SLURM_ARRAY_TASK_COUNT. srun tasks inside an array split each array task's share further.
    The GPU slot on the node comes from LOCAL_RANK or SLURM_LOCALID.
    """
    local_rank = _number(environ, "LOCAL_RANK" if environ.get("LOCAL_RANK", "").strip() else "SLURM_LOCALID")
    if explicit is not None:
        return replace(parse_shard(explicit), local_rank=local_rank)
    rank, world = _number(environ, "RANK"), _number(environ, "WORLD_SIZE")
    if (rank is None) != (world is None) and world != 1:  # WORLD_SIZE=1 alone is a one-process launch
        given, missing = ("RANK", "WORLD_SIZE") if world is None else ("WORLD_SIZE", "RANK")
        raise UsageError(f"the environment sets {given} but not {missing}; launchers set both: set {missing}, "
                         f"unset {given}, or pass --shard K/N")
    if world is not None:
        shard = parse_shard(f"{rank or 0}/{world}", "RANK/WORLD_SIZE from the environment")
        if world > 1:
            return replace(shard, local_rank=local_rank)
    index, count, sources = 0, 1, []
    array = _pair(environ, "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
    if array is not None:
        (task, tasks), first = array, _count(environ, "SLURM_ARRAY_TASK_MIN")
        step = _count(environ, "SLURM_ARRAY_TASK_STEP") or 1
        index, count = (task - first) // step, tasks
        sources.append("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    procs = _pair(environ, "SLURM_PROCID", "SLURM_NTASKS")
    if procs is not None:
        proc, tasks = procs
        index, count = index * tasks + proc, count * tasks
        sources.append("SLURM_PROCID/SLURM_NTASKS")
    if not sources:
        return Shard(0, 1, "default", local_rank)
    return replace(parse_shard(f"{index}/{count}", " and ".join(sources)), local_rank=local_rank)


def refuse_batch_options(opts, flag: str) -> None:
    """Options of batch runs that a one-picture comparison cannot honour: refused, not ignored."""
    given = {"--name": opts.name is not None, "--skip-existing": opts.skip_existing, "--keep-going": opts.keep_going,
             "--shard": opts.shard is not None}
    for option, present in given.items():
        if present:
            raise UsageError(f"{flag} makes one comparison, not a batch; drop {option}")


def split_lines(text: str, what: str | None = None) -> list[str]:
    """Lines at "\n" (and "\r\n") only: str.splitlines also breaks at U+2028, form feeds and other
    separators that JSON keeps raw inside strings, which would shift every later line's index.

    With `what` (the input, for the message), more than MAX_ITEMS lines are refused before the
    text is split: a 256 MiB file of empty lines would otherwise become 128 million strings."""
    if what is not None and text.count("\n", 0, len(text) - 1) >= MAX_ITEMS:
        raise UsageError(f"{what} holds over {MAX_ITEMS} lines, the most items one run plans; split it into several files")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def job_id(command: str, inputs: Sequence[object], settings: Mapping[str, object]) -> str:
    """A short digest of what a run makes, the same in every shard and restart, so `diffier
    manifest` can tell which outputs belong together."""
    text = json.dumps({"command": command, "inputs": list(inputs), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Item:
    """One output of a run, known before any model loads: its global index, its seed, the fields
    its file name may use, and why it cannot be made (`error`: it then fails in its turn, alone)."""

    index: int
    seed: int
    mode: str
    stem: str
    slug: str
    error: str | None = None
    name: str | None = None  # a name given with the input (a .jsonl line's "name"), replacing the template's
    subdir: str = ""  # sr --recursive: the input's sub-folder, kept under the output folder

    def name_fields(self) -> dict[str, object]:
        """The fields of --name and -o templates (outputs.NAME_FIELDS)."""
        return {"index": self.index, "seed": self.seed, "slug": self.slug, "mode": self.mode, "stem": self.stem}


@dataclass
class Planned:
    """One item this process will make: the item, the files it writes (the main output first, then
    its companions), and whether existing files there may be replaced (--overwrite, or the
    leftovers of an item a killed run left half done)."""

    item: Item
    paths: list[Path]
    replace: bool = False
    recompute_only: bool = False  # written already (--skip-existing): made again only for its batch-mates


@dataclass
class Plan:
    pending: list[Planned]  # in index order, whole batches
    total: int
    shard: Shard
    skipped: int
    batch_size: int = 1

    @property
    def to_write(self) -> list[Planned]:
        return [planned for planned in self.pending if not planned.recompute_only]


def plan_job(
    items: list[Item],
    *,
    output: str | None,
    name: str | None,
    default_name: str,
    shard: Shard,
    skip_existing: bool,
    overwrite: bool,
    seed_given: bool,
    companions: Callable[[Path], list[Path]] = lambda path: [],
    batch_size: int = 1,
    suffixes: Sequence[str] = (),
) -> Plan:
    """Names for all items, then this shard's part, minus what exists (with --skip-existing);
    checks the rest for clobbering before any model loads. `suffixes`: the extensions an output
    may have (outputs.plan_outputs; default: `default_name`'s).

    Batches are a property of the job, not of the process: batch k holds the items kB … kB+B−1 by
    global index, shards take whole batches, and a resumed batch that is partly written is made
    whole again, writing only what is missing. So with batched kernels, whose rounding depends on
    what shares a batch, a plain, a sharded and a resumed run give the same bytes."""
    if skip_existing and overwrite:
        raise UsageError("--skip-existing keeps existing outputs and --overwrite replaces them; choose one")
    # Seeds come from --seed + index: processes that drew their own random seeds would not make one run.
    if shard.count > 1 and not seed_given:
        raise UsageError(f"shard {shard} of a sharded run needs --seed N, the same in every shard, so the shards make one run")
    if skip_existing and not seed_given:
        raise UsageError("--skip-existing resumes a run: pass its --seed (printed when it started, and stored in every output)")
    paths = plan_outputs(output, items, default_name, name, suffixes)
    batches = shard.select(-(-len(items) // batch_size))
    pending, skipped = [], 0
    for start in range(batches.start * batch_size, min(batches.stop * batch_size, len(items)), batch_size):
        batch = [Planned(items[index], [paths[index], *companions(paths[index])], replace=overwrite or skip_existing)
                 for index in range(start, min(start + batch_size, len(items)))]
        for planned in batch:
            planned.recompute_only = skip_existing and all(path.is_file() for path in planned.paths)
        skipped += sum(planned.recompute_only for planned in batch)
        if any(not (planned.recompute_only or planned.item.error) for planned in batch):
            pending.extend(batch)
        else:  # nothing to sample: only a bad input left to fail again, alone
            pending.extend(planned for planned in batch if not planned.recompute_only)
    plan = Plan(pending=pending, total=len(items), shard=shard, skipped=skipped, batch_size=batch_size)
    for replacing in (False, True):
        preflight([path for planned in plan.to_write if planned.replace == replacing for path in planned.paths],
                  overwrite=replacing, resumable=True)
    for planned in plan.to_write:
        for path in planned.paths:
            remove_stale_parts(path)
    return plan


REPEAT_WINDOW_S = 1.0


def resume_hint(seed_given: bool, seed: int) -> str:
    """How to rerun a run so that it resumes: with --skip-existing, and with the seed it drew."""
    return "the same command with --skip-existing" + ("" if seed_given else f" --seed {seed}")


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
    resume: str = "the same command with --skip-existing"  # how to resume, for the Ctrl-C message
    name_single_item: bool = False  # put the item's label on a failure even when it is the only item
    written: int = 0
    failures: list[tuple[Item, str]] = field(default_factory=list)
    _stop_requested_at: float | None = None
    drain: Callable[[], None] = lambda: None  # finish the writes in flight (task.Writer.settle)

    def announce(self) -> None:
        """Say what this process will make, unless the run is a single item made from scratch."""
        plan = self.plan
        if plan.total == 1 and not plan.skipped:
            return
        shard = "" if plan.shard.count == 1 else f" (shard {plan.shard}, from {plan.shard.source})"
        skipped = f", {plan.skipped} already done" if plan.skipped else ""
        again = len(plan.pending) - len(plan.to_write)
        again = f", {again} made again for their batch" if again else ""
        self.reporter.message(f"{len(plan.to_write)} of {plan.total} item(s) to make{shard}{skipped}{again}")

    @contextmanager
    def running(self) -> Iterator[None]:
        """Ctrl-C or SIGTERM (Slurm's time limit, scancel) lets the current item finish, then stops;
        another Ctrl-C stops at once. A repeat within a second is the same keypress forwarded by
        a launcher (torchrun's agent passes its SIGINT on to workers that got it already)."""
        if not _in_main_thread():
            yield
            return

        def request_stop(signum, frame):
            now = time.monotonic()
            if self._stop_requested_at is not None:
                if signum == signal.SIGINT and now - self._stop_requested_at > REPEAT_WINDOW_S:
                    raise KeyboardInterrupt
                return
            self._stop_requested_at = now
            self.reporter.message("stopping after the current item (Ctrl-C again to stop now)")

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def batches(self, alone: Callable[[Item], bool] = lambda item: False) -> Iterator[list[Planned]]:
        """The plan's batches in order (items kB … kB+B−1 by global index); an item for which `alone`
        is true (a bad input line) comes after its batch-mates as a batch of its own, so it fails
        without taking others with it, and they stay together."""
        size = self.plan.batch_size
        for _, group in itertools.groupby(self.plan.pending, key=lambda planned: planned.item.index // size):
            group = list(group)
            batch = [planned for planned in group if not alone(planned.item)]
            if any(not planned.recompute_only for planned in batch):
                yield from self._checked(batch)
            for planned in group:
                if alone(planned.item):
                    yield from self._checked([planned])

    def _checked(self, batch: list[Planned]) -> Iterator[list[Planned]]:
        if self._stop_requested_at is not None:
            def interrupted() -> Interrupted:
                done = self.written + len(self.failures)
                return Interrupted(f"interrupted after {done} of {len(self.plan.to_write)} item(s); rerun {self.resume} to resume")

            with self._said_if_overtaken(lambda: str(interrupted())):
                self.drain()
            raise interrupted()
        yield batch

    @contextmanager
    def _said_if_overtaken(self, message: Callable[[], str]) -> Iterator[None]:
        """An earlier item's failure (a write still in flight) stops the run before this one's can:
        say this one on stderr first, so that neither is lost."""
        try:
            yield
        except Exception:
            self.reporter.message(message())
            raise

    @contextmanager
    def attempt(self, batch: list[Planned], label: Callable[[Item], str], earlier: Callable[[], None] = lambda: None
                ) -> Iterator[None]:
        """Run one batch; a failure stops the run with its own code, or with --keep-going is
        reported (stderr line, and a `--json` record with "error") and the run goes on. `earlier`
        first finishes what earlier items still have in flight (their writes), so that reports
        come in item order."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - sorted below: user-facing failures or bugs
            error = exc if isinstance(exc, DiffierError) else as_diffier_error(exc)
            if error is None:
                raise
            where = ", ".join(label(planned.item) for planned in batch)
            with self._said_if_overtaken(lambda: f"failed: {where}: {error}"):
                earlier()
            if error.code == ExitCode.OUT_OF_MEMORY:
                _release_cached_memory()
            if not self.keep_going:
                if self.plan.total > 1 or self.name_single_item:  # say which item, then stop with its own code
                    raise DiffierError(f"{where}: {error}", error.code) from exc
                if error is exc:
                    raise
                raise error from exc
            for planned in (planned for planned in batch if not planned.recompute_only):  # those stay written
                self.failures.append((planned.item, str(error)))
                self.reporter.message(f"failed: {label(planned.item)}: {error}")
                if self.json_lines:
                    record = {"index": planned.item.index, "input": label(planned.item), "error": str(error), "exit_code": int(error.code)}
                    print(json.dumps(record, ensure_ascii=False), flush=True)

    def wrote(self) -> None:
        """Count one item written (the interrupt message and the final count say how many)."""
        self.written += 1

    def finish(self, label: Callable[[Item], str]) -> None:
        """End the run: with failures (--keep-going), a PartialFailure listing them (exit 5)."""
        if not self.failures:
            return
        listed = "; ".join(f"{label(item)}: {message}" for item, message in self.failures[:10])
        more = f"; and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
        raise PartialFailure(
            f"{len(self.failures)} of {len(self.plan.to_write)} item(s) failed ({self.written} written): {listed}{more}"
        )


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _release_cached_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
