"""The one shape of every generating command (t2i, sr, tts), and the runner that owns the rest.

As transformers gives every pipeline preprocess → forward → postprocess, a task here says only
what differs between modalities: how to read its items, pre-check one before any model loads,
load its model, make a batch of outputs (in chunks of its own: SR pixel tiles, TTS utterances)
and encode each with its record. The runner does what every command does the same way: the seed,
the shard, the plan of outputs, resuming, the model loaded only when some item can be made,
progress, failures per item (--keep-going), atomic writes, `--json` lines and the messages.

Encoding and writing run on one background thread (`Writer`) while the next batch samples: a
768² PNG takes about 0.2 s to compress, a few percent of an image's time on a GPU. One thread
keeps the outputs in order; waiting for the previous batch's writes before queueing the next
bounds what is held in memory to one batch.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from diffier_cli.errors import UsageError
from diffier_cli.jobs import Item, JobRun, Plan, Planned, Shard, resolve_shard, resume_hint
from diffier_cli.outputs import write_atomically
from diffier_cli.refiners import run_mode
from diffier_cli.runtime import Reporter, choose_seed


@dataclass
class Made:
    """One item's output before it is written: its record, how to encode each planned file (the
    main output first, then its companions; called on the writer thread), and what the "wrote"
    message says of it first."""

    record: dict
    encode: Callable[[], list[bytes]]
    detail: str = ""
    kind: str = ""  # what the main file is, for the message of `-o -` ("WAV")


class Task(Protocol):
    """What one command knows; `options` are its parsed options (with `seed`, `refiner`, `json`,
    `quiet`, `keep_going` and `shard`), `batch_size` how many items `make` takes at once."""

    options: object
    batch_size: int
    name_single_item: bool  # name the item in a failure even when the run has one

    def read(self, seed: int, mode: str) -> list[Item]:
        """Every item of the run in index order, each with its seed; a bad input is an item whose
        `error` says why, so that every later item keeps its index, seed and name."""

    def plan(self, items: list[Item], shard: Shard) -> Plan:
        """This shard's items with the files each writes (jobs.plan_job), checked before any work."""

    def check(self, item: Item, reporter: Reporter, several: bool) -> None:
        """Set `item.error` for an item that cannot be made, from what can be known without a
        model (an image's header, a text's words); `several`: the run has more than one item."""

    def load(self, local_rank: int | None, reporter: Reporter) -> None:
        """The model, once per process, on the process's own GPU when a launcher says which."""

    def progress(self, reporter: Reporter, pending: list[Planned], mode: str) -> AbstractContextManager:
        """The progress bar of the whole run, or none where each item shows its own."""

    def make(self, items: Sequence[Item], reporter: Reporter, plan: Plan) -> list[Made]:
        """One batch of checked items → one `Made` each, in order (the forward pass and the encoding)."""

    def label(self, item: Item) -> str:
        """The item as messages name it: its line, its input file."""


def run(task: Task) -> None:
    """Read → plan → check → load once → make each batch → write each output, for any task."""
    opts = task.options
    reporter = Reporter(opts.quiet)
    seed = choose_seed(opts.seed)
    mode = run_mode(opts.refiner)
    items = task.read(seed, mode)
    shard = resolve_shard(opts.shard)
    plan = task.plan(items, shard)
    job = JobRun(plan, reporter, opts.json, opts.keep_going, resume=resume_hint(opts.seed is not None, seed),
                 name_single_item=task.name_single_item)
    reporter.message(f"seed {seed}")
    job.announce()
    for planned in plan.pending:  # a bad item fails as its own item, and alone it loads no model
        if not planned.item.error:
            task.check(planned.item, reporter, plan.total > 1)
    if any(not planned.item.error for planned in plan.to_write):
        task.load(shard.local_rank, reporter)

    writer = Writer(job, task.label, mode, opts.json, reporter)
    job.drain = writer.settle  # an interrupt counts what is on disk
    try:
        with job.running(), task.progress(reporter, plan.pending, mode):
            for batch in job.batches(alone=lambda item: bool(item.error)):
                made = None
                with job.attempt(batch, task.label, earlier=writer.settle):
                    if batch[0].item.error:
                        raise UsageError(batch[0].item.error)
                    started = time.perf_counter()
                    made = task.make([planned.item for planned in batch], reporter, plan)
                    seconds = (time.perf_counter() - started) / len(batch)
                writer.settle()
                for planned, output in zip(batch, made or []):
                    if not planned.recompute_only:
                        writer.submit(planned, output, seconds)
            writer.settle()
    finally:
        writer.close()
    job.finish(task.label)


class Writer:
    """Encodes and writes each output on one background thread, which prints nothing; the run's
    thread reports each write in item order (the message and the `--json` line) and accounts for
    it (counted, or failed on its own under --keep-going: one full disk fails one item)."""

    def __init__(self, job: JobRun, label: Callable[[Item], str], mode: str, json_lines: bool, reporter: Reporter):
        self.job, self.label, self.mode, self.json_lines, self.reporter = job, label, mode, json_lines, reporter
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffier-writer")
        self.queued: deque[tuple[Planned, Made, float, Future]] = deque()

    def submit(self, planned: Planned, made: Made, seconds: float) -> None:
        self.queued.append((planned, made, seconds, self.pool.submit(write, planned, made)))

    def settle(self) -> None:
        """Wait for every queued write and report it, oldest first. A failed write that stops the
        run (no --keep-going) is raised after the rest of the queue, whose files are on disk by
        then: they are reported and counted too, and any further failure is said on stderr."""
        stop: Exception | None = None
        while self.queued:
            planned, made, seconds, future = self.queued.popleft()
            try:
                with self.job.attempt([planned], self.label):
                    size = future.result()
                    report(planned, made, size, seconds, self.mode, self.json_lines, self.reporter)
                    self.job.wrote()
            except Exception as exc:  # noqa: BLE001 - the first is raised below, once the queue is done
                if stop is not None:
                    self.reporter.message(f"failed: {exc}")
                stop = stop or exc
        if stop is not None:
            raise stop

    def close(self) -> None:
        """On any way out, let queued writes finish: each is atomic, and none is left half done."""
        self.pool.shutdown(wait=True)


def write(planned: Planned, made: Made) -> int:
    """Encode and write one item's files (companions first: the main output on disk means the
    item is done, which --skip-existing trusts), or with no planned path its one output to stdout
    (`-o -`); the main file's size."""
    files = made.encode()
    if not planned.paths:
        sys.stdout.buffer.write(files[0])
        sys.stdout.buffer.flush()
    else:
        write_atomically(dict(reversed(list(zip(planned.paths, files)))), planned.replace)
    return len(files[0])


def report(planned: Planned, made: Made, size: int, seconds: float, mode: str, json_lines: bool, reporter: Reporter) -> None:
    done = ", ".join(part for part in (made.detail, f"seed {planned.item.seed}", mode, f"{seconds:.1f} s") if part)
    if not planned.paths:
        reporter.message(f"wrote {size} bytes {f'of {made.kind} ' if made.kind else ''}to stdout ({done})")
        return
    if json_lines:
        print_record(planned.paths[0], seconds, made.record)
    written = " and ".join([str(planned.paths[0]), *(path.name for path in planned.paths[1:])])
    reporter.message(f"wrote {written} ({done})")


def print_record(path: Path, seconds: float, record: dict) -> None:
    """--json: one line per output written, its record with where it went and how long it took."""
    print(json.dumps({"path": str(path), "wall_time_s": round(seconds, 3), **record}, ensure_ascii=False), flush=True)
