"""Batch jobs through the command: shards, launchers, resuming, --keep-going, the manifest, batch
sizes (t2i on the tiny saved pipeline; sr and tts have their own in their files). The arithmetic
behind them and the batch-invariant kernels: tests/core/test_jobs.py.

Every CLI run here pins OMP_NUM_THREADS=1: torchrun does that for its workers, and on the CPU a
reduction split over a different number of threads rounds differently, so byte-identity across
processes holds for the same thread count (see diffier_cli/invariant.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import DIFFIER, pixels, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
PROMPTS = ["a red bicycle", "a cat on a mat", "a lighthouse at dusk", "two apples", "a blue door"]


def t2i_args(model: Path, *extra: str) -> list[str]:
    return ["t2i", "--model", str(model), "--steps", "3", "--seed", "11", *extra]


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: pixels(path) for path in sorted(folder.glob("*.png"))}


def assert_same_files(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


# --- t2i end to end: shards, launchers, batch size ------------------------------------------


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def whole_run(tiny_sd, prompts_file, tmp_path_factory) -> Path:
    """One unsharded refined run over all prompts, batched by 4 with batch-invariant kernels: the
    reference for runs at other batch sizes."""
    folder = tmp_path_factory.mktemp("whole")
    result = run_cli(*t2i_args(tiny_sd["v_prediction"], "--prompts-file", str(prompts_file), "-o", f"{folder}/",
                               "--batch-size", "4", "--batch-invariant"), env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return folder


def test_three_shards_equal_one_run_file_for_file(tiny_sd, prompts_file, whole_run, tmp_path):
    """Shards 0/3 and 2/3 by flag, 1/3 by torchrun's variables, each its own process, batch size 1."""
    model = tiny_sd["v_prediction"]
    for k in range(3):
        how = ["--shard", f"{k}/3"] if k != 1 else []
        env = {**ONE_THREAD, **({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "0"} if k == 1 else {})}
        result = run_cli(*t2i_args(model, "--prompts-file", str(prompts_file), "-o", f"{tmp_path}/", "--batch-invariant",
                                   *how), env=env, in_process=False)
        assert result.returncode == 0, result.stderr
        assert f"of 5 item(s) to make (shard {k}/3" in result.stderr
    assert_same_files(outputs(tmp_path), outputs(whole_run))

    listing = run_cli("manifest", str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    assert [r["record"]["job"]["index"] for r in listing.records] == list(range(5))
    assert "5 of 5 item(s)" in listing.stderr
    next(tmp_path.glob("00003-*.png")).unlink()
    incomplete = run_cli("manifest", str(tmp_path))
    assert incomplete.returncode == 5 and "missing 3" in incomplete.stderr


def test_torchrun_two_processes_equal_one_run(tiny_sd, prompts_file, whole_run, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "diffier_cli",
               *t2i_args(tiny_sd["v_prediction"], "--prompts-file", str(prompts_file), "-o", f"{tmp_path}/", "-q",
                         "--batch-invariant")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    done = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert_same_files(outputs(tmp_path), outputs(whole_run))


def test_baseline_batch_sizes_one_and_four_give_identical_pixels(tiny_sd, prompts_file, tmp_path):
    runs = {}
    for size in ("1", "4"):
        folder = tmp_path / size
        result = run_cli(*t2i_args(tiny_sd["epsilon"], "--prompts-file", str(prompts_file), "--baseline",
                                   "-o", f"{folder}/", "--batch-size", size, "--num-images", "2", "--batch-invariant"),
                         env=ONE_THREAD)
        assert result.returncode == 0, result.stderr
        runs[size] = outputs(folder)
    assert len(runs["1"]) == 10
    assert_same_files(runs["1"], runs["4"])


def test_batched_kernels_give_the_same_bytes_plain_sharded_and_resumed(tiny_sd, prompts_file, tmp_path):
    """The default kernels round by batch, so batches belong to the job: batch k is items 2k, 2k+1
    here, shards take whole batches, and a resume remakes a partly written batch whole."""
    model = tiny_sd["v_prediction"]
    common = ("--prompts-file", str(prompts_file), "--batch-size", "2")
    plain = run_cli(*t2i_args(model, *common, "-o", f"{tmp_path / 'plain'}/", "--json"), env=ONE_THREAD)
    assert plain.returncode == 0, plain.stderr
    assert {r["job"]["batch_size"] for r in plain.records} == {2}
    reference = {path.name: path.read_bytes() for path in (tmp_path / "plain").glob("*.png")}
    assert len(reference) == 5

    for k, made in ((0, 4), (1, 1)):  # 3 batches: shard 0/2 takes batches 0 and 1, shard 1/2 batch 2
        shard = run_cli(*t2i_args(model, *common, "-o", f"{tmp_path / 'sharded'}/", "--shard", f"{k}/2"), env=ONE_THREAD)
        assert shard.returncode == 0 and f"{made} of 5 item(s) to make (shard {k}/2" in shard.stderr, shard.stderr
    assert {path.name: path.read_bytes() for path in (tmp_path / "sharded").glob("*.png")} == reference

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name, data in reference.items():
        if not name.startswith("00001-"):  # item 1 missing: its batch-mate item 0 is made again, not rewritten
            (resumed / name).write_bytes(data)
    kept = next(resumed.glob("00000-*.png")).stat()
    again = run_cli(*t2i_args(model, *common, "-o", f"{resumed}/", "--skip-existing"), env=ONE_THREAD)
    assert again.returncode == 0, again.stderr
    assert "1 of 5 item(s) to make, 4 already done, 1 made again for their batch" in again.stderr
    assert {path.name: path.read_bytes() for path in resumed.glob("*.png")} == reference
    assert next(resumed.glob("00000-*.png")).stat().st_mtime_ns == kept.st_mtime_ns


# --- resuming and failures --------------------------------------------------------------------


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    return subprocess.Popen([DIFFIER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_outputs(folder: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.png"))) < count:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_killed_run_resumes_with_skip_existing_to_the_same_files(tiny_sd, tmp_path):
    prompts = tmp_path / "many.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(8)))
    model = tiny_sd["epsilon"]
    common = ["--prompts-file", str(prompts), "--steps", "15"]  # slow enough to be stopped part-way
    reference = tmp_path / "reference"
    assert run_cli(*t2i_args(model, *common, "-o", f"{reference}/"), env=ONE_THREAD).returncode == 0
    out = tmp_path / "out"
    args = t2i_args(model, *common, "-o", f"{out}/", "--skip-existing")

    first = _start(args)  # Ctrl-C: the current item finishes, then the run stops and says how to resume
    _wait_for_outputs(out, 1, first)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err.decode()
    assert "--skip-existing to resume" in err.decode().splitlines()[-1]
    made = len(list(out.glob("*.png")))
    assert 1 <= made < 8

    second = _start(args)  # SIGKILL: no chance to clean up
    _wait_for_outputs(out, made + 1, second)
    second.kill()
    second.wait(timeout=60)
    # what a kill during a write leaves behind: a temporary file, which the resumed run removes
    (out / f".{sorted(outputs(reference))[-1]}.x1y2.part").write_bytes(b"\x89PNG truncated")

    third = run_cli(*args, env=ONE_THREAD)
    assert third.returncode == 0, third.stderr
    assert "already done" in third.stderr
    assert_same_files(outputs(out), outputs(reference))
    assert sorted(p.name for p in out.iterdir()) == sorted(outputs(reference))


def test_keep_going_reports_bad_lines_and_exits_5(tiny_sd, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a cat", "seed": 99, "name": "cat"}\n'
        "\n"
        '{"prompt": "a dog", "negative_prompt": "blurry"}\n'
        "{not json\n"
        '{"text": "no prompt key"}\n'
    )
    out = tmp_path / "out"
    result = run_cli(*t2i_args(tiny_sd["epsilon"], "--prompts-file", str(prompts), "-o", f"{out}/", "--keep-going",
                               "--batch-size", "2", "--json"), env=ONE_THREAD)
    assert result.returncode == 5, result.stderr
    written = [r for r in result.records if "error" not in r]
    failed = [r for r in result.records if "error" in r]
    assert [(r["index"], r["seed"], Path(r["path"]).name) for r in written] == [
        (0, 99, "cat.png"), (2, 13, "00002-13-refined-a-dog.png")]
    assert written[1]["negative_prompt"] == "blurry"
    assert sorted(r["index"] for r in failed) == [1, 3, 4]
    assert all(r["exit_code"] == 2 for r in failed)
    last = result.stderr.splitlines()[-1]
    assert last.startswith("diffier: error: 3 of 5 item(s) failed (2 written)") and "line 2 is empty" in last
    assert sorted(p.name for p in out.iterdir()) == ["00002-13-refined-a-dog.png", "cat.png"]

    # resumed, the bad lines fail again alone: their written batch-mates are not sampled again, no model loads
    again = run_cli(*t2i_args(tiny_sd["epsilon"], "--prompts-file", str(prompts), "-o", f"{out}/", "--keep-going",
                              "--batch-size", "2", "--skip-existing"), env=ONE_THREAD)
    assert again.returncode == 5, again.stderr
    assert "3 of 5 item(s) to make, 2 already done\n" in again.stderr and "loading" not in again.stderr

    # without --keep-going the first bad line stops the run with its own code, naming the item
    stop = run_cli(*t2i_args(tiny_sd["epsilon"], "--prompts-file", str(prompts), "-o", f"{tmp_path / 'stop'}/"),
                   env=ONE_THREAD)
    assert stop.returncode == 2
    assert stop.stderr.splitlines()[-1] == "diffier: error: item 1 (line 2): p.jsonl line 2 is empty".replace(
        "p.jsonl", str(prompts))


def test_memory_knobs_are_recorded_and_cpu_offload_needs_a_gpu(tiny_sd, tmp_path):
    out = tmp_path / "m.png"
    result = run_cli(*t2i_args(tiny_sd["epsilon"], "a cat", "-o", str(out), "--vae-slicing", "--vae-tiling",
                               "--attention-slicing", "--json"))
    assert result.returncode == 0, result.stderr
    assert result.records[0]["params"]["memory"] == ["vae_slicing", "vae_tiling", "attention_slicing"]
    assert result.records[0]["params"]["compile"] is False
    offload = run_cli(*t2i_args(tiny_sd["epsilon"], "a cat", "-o", str(tmp_path / "o.png"), "--cpu-offload",
                                "--device", "cpu"))
    assert offload.returncode == 2 and "--cpu-offload" in offload.stderr and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(("other", "needle"), [("--batch-invariant", "--compile fuses the kernels that --batch-invariant"),
                                              ("--cpu-offload", "--compile cannot trace through --cpu-offload's hooks")])
def test_compile_with_what_it_cannot_work_with_is_refused_before_loading(tmp_path, other, needle):
    """--compile fuses the very kernels --batch-invariant splits per image, and cannot trace the
    offload hooks: one or the other, before any model loads (the compiled path itself runs in
    tests/benchmarks/test_gpu_suite.py, a compile being ~30 s here)."""
    result = run_cli("t2i", "a cat", "--model", str(tmp_path / "no-such-model"), "--compile", other,
                     "-o", str(tmp_path / "c.png"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f"diffier: error: {needle}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("extra", "needle"), [(("--shard", "1/2"), "needs --seed"), (("--skip-existing",), "pass its --seed")])
def test_shards_and_resumes_need_the_seed_of_the_run(tmp_path, extra, needle):
    result = run_cli("t2i", "a cat", "-o", f"{tmp_path}/", *extra)
    assert result.returncode == 2 and needle in result.stderr and not list(tmp_path.iterdir())


def test_an_interrupt_anywhere_says_how_to_resume(tmp_path, monkeypatch):
    from diffier_cli import task

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(task, "run", interrupted)
    result = run_cli("t2i", "a cat", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 130
    assert result.stderr.splitlines() == [
        "diffier: error: interrupted; rerun the same command with --skip-existing (and the printed --seed) to resume"]


def test_keep_going_fails_one_write_of_a_batch_without_counting_others_twice(tiny_sd, tmp_path, monkeypatch):
    from diffier_cli import task
    from diffier_cli.errors import DiffierError

    real_write = task.write_atomically

    def full_disk_for_item_1(files, replace):
        if any(path.name.startswith("00001-") for path in files):
            time.sleep(0.3)  # the writer thread would be on to item 2 by now: reports must still come in order
            raise DiffierError("cannot write: No space left on device")
        real_write(files, replace)

    monkeypatch.setattr(task, "write_atomically", full_disk_for_item_1)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    result = run_cli(*t2i_args(tiny_sd["epsilon"], "--prompts-file", str(prompts), "-o", f"{tmp_path}/out/",
                               "--batch-size", "3", "--keep-going", "--json"))
    assert result.returncode == 5
    assert [(r["index"], "error" in r) for r in result.records] == [(0, False), (1, True), (2, False)]
    assert result.stderr.splitlines()[-1].startswith("diffier: error: 1 of 3 item(s) failed (2 written)")


def test_a_failed_write_that_stops_the_run_still_reports_the_later_writes_on_disk(tiny_sd, tmp_path, monkeypatch):
    """Without --keep-going the first failed write stops the run, but the writes queued behind it
    are already on disk: each is reported (message, --json line) and counted before the error."""
    from diffier_cli import task
    from diffier_cli.errors import DiffierError

    real_write = task.write_atomically

    def full_disk_for_item_1(files, replace):
        if any(path.name.startswith("00001-") for path in files):
            time.sleep(0.3)  # item 2's write is done by now
            raise DiffierError("cannot write: No space left on device")
        real_write(files, replace)

    monkeypatch.setattr(task, "write_atomically", full_disk_for_item_1)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    out = tmp_path / "out"
    result = run_cli(*t2i_args(tiny_sd["epsilon"], "--prompts-file", str(prompts), "-o", f"{out}/", "--batch-size", "3", "--json"))
    assert result.returncode == 1
    assert [r["index"] for r in result.records] == [0, 2] and all("error" not in r for r in result.records)
    assert sorted(path.name[:5] for path in out.iterdir()) == ["00000", "00002"]
    assert [line for line in result.stderr.splitlines() if line.startswith("wrote ")] == [
        f"wrote {r['path']} (seed {r['seed']}, refined, {r['wall_time_s']:.1f} s)"
        for r in result.records]
    assert result.stderr.splitlines()[-1] == "diffier: error: item 1 (line 2): cannot write: No space left on device"


def _fail_item_1(items):
    from diffier_cli.errors import DiffierError

    if items[0].index == 1:
        raise DiffierError("the decoded image overflowed")


def _interrupt_during_item_0(items):
    if items[0].index == 0:
        os.kill(os.getpid(), signal.SIGINT)  # the run's handler: stop after the current item


@pytest.mark.parametrize(("during_sampling", "said"), [
    (_fail_item_1, "failed: item 1 (line 2): the decoded image overflowed"),
    (_interrupt_during_item_0, "interrupted after 0 of 2 item(s); rerun the same command with --skip-existing to resume"),
], ids=["batch failure", "interrupt"])
def test_what_an_earlier_failed_write_overtakes_is_still_said(tiny_sd, tmp_path, monkeypatch, during_sampling, said):
    """Item 0's write fails late, after item 1 has failed or Ctrl-C has asked to stop: the run stops
    with item 0's error (the earliest item's), and what it overtook is said on stderr just before."""
    from diffier_cli import t2i, task
    from diffier_cli.errors import DiffierError

    real_generate = t2i.generate

    def slow_full_disk(files, replace):
        time.sleep(0.3)
        raise DiffierError("cannot write: No space left on device")

    def sampling(backbone, opts, items, *args, **kwargs):
        during_sampling(items)
        return real_generate(backbone, opts, items, *args, **kwargs)

    monkeypatch.setattr(task, "write_atomically", slow_full_disk)
    monkeypatch.setattr(t2i, "generate", sampling)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    result = run_cli(*t2i_args(tiny_sd["epsilon"], "--prompts-file", str(prompts), "-o", f"{tmp_path}/out/", "--seed", "3"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == [said, "diffier: error: item 0 (line 1): cannot write: No space left on device"]
