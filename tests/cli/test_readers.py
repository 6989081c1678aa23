"""Readers that do not trust what they read (issue 13): `diffier manifest`, `diffier info` and the
prompt reader on hostile files. Each case ends as one line on stderr naming the file and the
problem, a documented exit code, bounded time, and the good files still shown; never a traceback.

The wall-clock bounds below are loose guards against hanging (a file claiming 10**12 items once
made manifest iterate all of them), not performance claims.
"""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from models import untrusted
from diffier_cli.limits import MAX_JSON_DEPTH, MAX_RECORD_BYTES, MAX_TEXT_BYTES
from diffier_cli.manifest import JobAudit
from diffier_cli.t2i import _jsonl_line
from tests.helpers import assert_one_line_error, damaged_copies, run_cli

HANG_GUARD_S = 10.0
GOOD = {"tool": "diffier", "command": "t2i", "index": 0, "seed": 5, "job": {"id": "0123456789ab", "count": 1, "index": 0}}
DEEP = "[" * 100_000  # RecursionError in json.loads
DEEP_BUT_PARSES = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)


def png(path: Path, text: str, key: str = "diffier", zip: bool = False) -> Path:
    info = PngInfo()
    info.add_text(key, text, zip=zip)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def with_job(**job) -> str:
    return json.dumps({"command": "t2i", "job": {"id": "hostile", **job}})


def timed(*args: str):
    started = time.perf_counter()
    result = run_cli(*args)
    return result, time.perf_counter() - started


def assert_clean_stderr(result) -> list[str]:
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    return result.stderr.splitlines()


# --- manifest: a bad record is a problem line, the rest is listed and audited -------------------


HOSTILE_RECORDS = {
    "huge count": (with_job(count=10**12, index=0), "job.count 1000000000000 is not an integer in 1..200000"),
    "list index": (with_job(count=2, index=[1, 2]), "job.index [1, 2] is not an integer in 0..1"),
    "string count": (with_job(count="2", index=0), 'job.count "2" is not an integer in 1..200000'),
    "bool count": (with_job(count=True, index=0), "job.count true is not an integer"),
    "bool index": (with_job(count=2, index=False), "job.index false is not an integer in 0..1"),
    "negative index": (with_job(count=2, index=-1), "job.index -1 is not an integer in 0..1"),
    "index = count": (with_job(count=2, index=2), "job.index 2 is not an integer in 0..1"),
    "job not an object": (json.dumps({"job": "x"}), 'job "x" is not an object'),
    "id not a string": (json.dumps({"job": {"id": 7, "count": 1, "index": 0}}), "job.id 7 is not an id"),
    "id with a newline": (json.dumps({"job": {"id": "a\nb", "count": 1, "index": 0}}), 'job.id "a\\nb" is not an id'),
    "command not a string": (json.dumps({"command": ["t2i"]}), 'command ["t2i"] is not a name'),
    "seed not an int": (json.dumps({"seed": 1.5}), "seed 1.5 is not a non-negative integer"),
    "index a bool": (json.dumps({"index": True}), "index true is not a non-negative integer"),
    "non-object record": ("[1, 2]", "its diffier chunk is a JSON list, not an object"),
    "deep JSON": (DEEP, f"its diffier chunk nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)"),
    "deep JSON that parses": (DEEP_BUT_PARSES, f"nests deeper than {MAX_JSON_DEPTH} levels"),
    "NaN": ('{"seed": NaN}', "holds NaN, which is not a JSON number"),
    "float overflow": ('{"x": 1e400}', "holds 1e400, a number too large for a float"),
    "huge int": ('{"seed": 1' + "0" * 5000 + "}", "holds an integer of 5001 digits, over 4300 (MAX_INT_DIGITS)"),
    "not JSON": ("{not json", "its diffier chunk is not JSON ("),
}


@pytest.mark.parametrize("case", list(HOSTILE_RECORDS))
def test_manifest_leaves_out_a_hostile_record_and_lists_the_good_file(case, tmp_path):
    text, why = HOSTILE_RECORDS[case]
    good = png(tmp_path / "good.png", json.dumps(GOOD))
    bad = png(tmp_path / "bad.png", text)
    result, seconds = timed("manifest", str(tmp_path))
    assert seconds < HANG_GUARD_S
    assert result.returncode == 5, result.stderr
    problem, job_line, last = assert_clean_stderr(result)
    assert problem.startswith(f"{bad}: ") and why in problem, problem
    assert job_line == "job 0123456789ab (t2i): 1 of 1 item(s)"
    assert last.startswith("diffier: error: 1 file(s) left out, their record unreadable or untrusted")
    assert result.records == [{"path": str(good), "record": GOOD}]


def test_a_huge_claimed_count_costs_nothing(tmp_path):
    """10**12 items claimed is refused; MAX_JOB_COUNT claimed and one present is audited by
    counting, not by walking the range."""
    png(tmp_path / "huge.png", with_job(count=10**12, index=0))
    many = {"command": "t2i", "job": {"id": "many", "count": 200_000, "index": 199_999}}
    png(tmp_path / "many.png", json.dumps(many))
    result, seconds = timed("manifest", str(tmp_path))
    assert seconds < HANG_GUARD_S
    assert result.returncode == 5
    lines = assert_clean_stderr(result)
    assert lines[0] == f"{tmp_path / 'huge.png'}: job.count 1000000000000 is not an integer in 1..200000 (MAX_JOB_COUNT)"
    assert lines[1] == "job many (t2i): 1 of 200000 item(s); missing " + ", ".join(map(str, range(20))) + " ..."
    assert "1 of 1 job(s) incomplete: many" in lines[2] and "1 file(s) left out" in lines[2]


def test_manifest_with_a_50_mb_compressed_text_chunk(tmp_path):
    good = png(tmp_path / "good.png", json.dumps(GOOD))
    bomb = png(tmp_path / "bomb.png", "x" * (50 * 2**20), zip=True)
    assert bomb.stat().st_size < 2**20  # small on disk, 50 MB once inflated
    result, seconds = timed("manifest", str(tmp_path))
    assert seconds < HANG_GUARD_S
    assert result.returncode == 5
    problem = assert_clean_stderr(result)[0]
    assert problem.startswith(f"{bomb}: Pillow refused it (Decompressed data too large")
    assert result.records == [{"path": str(good), "record": GOOD}]


def test_manifest_refuses_a_job_whose_files_disagree_on_its_count(tmp_path):
    png(tmp_path / "a.png", with_job(count=2, index=0))
    png(tmp_path / "b.png", with_job(count=3, index=1))
    result = run_cli("manifest", str(tmp_path))
    assert result.returncode == 5
    lines = assert_clean_stderr(result)
    assert lines[0] == f"{tmp_path / 'b.png'}: job hostile has count 3 here but 2 in {tmp_path / 'a.png'}"
    assert [r["path"] for r in result.records] == [str(tmp_path / "a.png")]


def test_manifest_problems_are_errors_even_with_quiet(tmp_path):
    png(tmp_path / "good.png", json.dumps(GOOD))
    bad = png(tmp_path / "bad.png", DEEP)
    result = run_cli("manifest", str(tmp_path), "-q")
    assert result.returncode == 5
    problem, last = assert_clean_stderr(result)
    assert problem.startswith(f"{bad}: its diffier chunk nests deeper")
    assert last.startswith("diffier: error: 1 file(s) left out")


def test_manifest_counts_foreign_files_without_failing(tmp_path):
    good = png(tmp_path / "good.png", json.dumps(GOOD))
    png(tmp_path / "a1111.png", "a cat\nSteps: 20", key="parameters")
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    (tmp_path / "lonely.wav").write_bytes(b"RIFF")  # no sidecar: not an output of diffier
    result = run_cli("manifest", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert assert_clean_stderr(result) == ["3 file(s) without a diffier record left out", "job 0123456789ab (t2i): 1 of 1 item(s)"]
    assert result.records == [{"path": str(good), "record": GOOD}]


def test_manifest_with_only_bad_files_lists_nothing_and_exits_5(tmp_path):
    bad = png(tmp_path / "bad.png", "[]")
    result = run_cli("manifest", str(tmp_path))
    assert result.returncode == 5 and result.stdout == ""
    assert assert_clean_stderr(result)[0].startswith(f"{bad}: its diffier chunk is a JSON list")


@pytest.mark.parametrize("present", [[], [0], [4], [0, 1, 2, 3, 4], [1, 3], list(range(0, 60, 2)), [59]])
def test_first_missing_walks_the_gaps(present):
    audit = JobAudit("t2i", 60, "x")
    for index in present:
        audit.indices[index].append(f"{index}.png")
    expected = [i for i in range(60) if i not in present]
    assert audit.missing_count == len(expected)
    assert audit.first_missing() == expected[:20]
    assert audit.first_missing(3) == expected[:3]


# --- info: every good file shown, every bad one a line, the worst code at the end -------------


def test_info_shows_the_good_files_and_one_line_per_bad_one(tmp_path):
    good = png(tmp_path / "good.png", json.dumps(GOOD))
    deep = png(tmp_path / "deep.png", DEEP)
    bomb = png(tmp_path / "bomb.png", "x" * (50 * 2**20), zip=True)
    listed = png(tmp_path / "list.png", "[1, 2]")
    later = png(tmp_path / "later.png", json.dumps({**GOOD, "seed": 6}))
    files = [good, deep, tmp_path / "missing.png", bomb, listed, later]
    result, seconds = timed("info", "--json", *map(str, files))
    assert seconds < HANG_GUARD_S
    assert result.returncode == 2
    errors = assert_clean_stderr(result)
    assert result.records == [
        {"path": str(good), "kind": "diffier", "record": GOOD},
        *({"path": str(bad), "kind": "none", "record": None, "error": line.removeprefix("diffier: error: "), "exit_code": 2}
          for bad, line in zip(files[1:5], errors)),
        {"path": str(later), "kind": "diffier", "record": {**GOOD, "seed": 6}},
    ]
    lines = errors
    assert [line.split(": ")[2] for line in lines] == [str(deep), str(tmp_path / "missing.png"), str(bomb), str(listed)]
    assert all(line.startswith("diffier: error: ") for line in lines)
    assert f"{deep}: its diffier chunk nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)" in lines[0]
    assert f"{tmp_path / 'missing.png'}: no such file" in lines[1]
    assert f"{bomb}: Pillow refused it (Decompressed data too large" in lines[2]
    assert f"{listed}: its diffier chunk is a JSON list, not an object" in lines[3]

    plain = run_cli("info", str(deep), str(good))
    assert plain.returncode == 2 and plain.stdout.startswith(f"{good}: diffier\n{{") and len(assert_clean_stderr(plain)) == 1


@pytest.mark.parametrize(("text", "needle"), [(DEEP, "nests deeper than"), ("x" * (50 * 2**20), "Pillow refused it")])
def test_info_on_one_hostile_png(tmp_path, text, needle):
    bad = png(tmp_path / "bad.png", text, zip=len(text) > 2**20)
    result, seconds = timed("info", str(bad))
    assert seconds < HANG_GUARD_S
    assert_one_line_error(result, 2, f"{bad}: ", needle)


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width × height pixels, with a diffier chunk and a few bytes of data."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", b"diffier\0" + json.dumps(GOOD).encode())
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [10_000, 20_000])  # over MAX_IMAGE_PIXELS: Pillow warns; over twice that: it raises
def test_a_decompression_bomb_header_is_one_error_line_and_no_warning(tmp_path, side):
    bomb = png_claiming(tmp_path / "bomb.png", side, side)
    result = run_cli("info", str(bomb))
    assert_one_line_error(result, 2, f"{bomb}: refused as a decompression bomb (Image size ({side * side} pixels)")
    assert "DecompressionBombWarning" not in result.stderr


def test_a_corrupted_png_never_escapes_as_a_traceback(tmp_path):
    """Random byte flips, cuts and insertions in a genuine-looking PNG: each read is a record or a
    one-line usage error (a fixed seed, so a failure is reproducible)."""
    from diffier_cli.errors import DiffierError
    from diffier_cli.embedded import read_record

    buffer = io.BytesIO()
    info = PngInfo()
    info.add_text("diffier", json.dumps(GOOD))
    info.add_text("parameters", "a cat\nSteps: 20", zip=True)
    Image.new("RGB", (16, 16)).save(buffer, "PNG", pnginfo=info)
    path = tmp_path / "f.png"
    for data in damaged_copies(buffer.getvalue(), seed=13, trials=300, keep=8):
        path.write_bytes(data)
        try:
            read_record(path)
        except DiffierError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)


# --- WAV sidecars go through the same reader ---------------------------------------------------


def test_a_wav_sidecar_is_read_with_the_same_bounds(tmp_path):
    good, deep, big = (tmp_path / f"{name}.wav" for name in ("good", "deep", "big"))
    for wav in (good, deep, big):
        wav.write_bytes(b"RIFF")  # read_record reads the sidecar only
    good.with_suffix(".json").write_text(json.dumps(GOOD))
    deep.with_suffix(".json").write_text(DEEP)
    with open(big.with_suffix(".json"), "wb") as sparse:
        sparse.truncate(MAX_RECORD_BYTES + 1)  # refused by its size, before it is read
    result, seconds = timed("info", "--json", str(good), str(deep), str(big))
    assert seconds < HANG_GUARD_S
    assert result.returncode == 2
    assert [(r["path"], r["kind"], r["record"]) for r in result.records] == [(str(good), "diffier", GOOD), (str(deep), "none", None),
                                                                             (str(big), "none", None)]
    lines = assert_clean_stderr(result)
    assert lines[0] == (f"diffier: error: {deep}: its sidecar deep.json nests deeper than {MAX_JSON_DEPTH} levels "
                        "(MAX_JSON_DEPTH); not written by diffier, or altered since; move it away")
    assert lines[1].startswith(f"diffier: error: {big}: its sidecar big.json is over 16 MiB (MAX_RECORD_BYTES)")

    audit = run_cli("manifest", str(tmp_path))
    assert audit.returncode == 5 and [r["path"] for r in audit.records] == [str(good)]
    assert [line.split(": ")[0] for line in audit.stderr.splitlines()[:2]] == [str(big), str(deep)]


# --- the prompt reader ------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "needle"), [
    (DEEP, "nests deeper than 32 levels (MAX_JSON_DEPTH)"),
    ('{"prompt": ' + "[" * 40 + "]" * 40 + "}", "nests deeper than 32 levels"),
    ('{"prompt": "a cat", "seed": NaN}', "holds NaN"),
    ('{"prompt": "' + "a" * MAX_RECORD_BYTES + '"}', "over 16 MiB (MAX_RECORD_BYTES)"),
    ("{not json", "is not JSON ("),
])
def test_a_bad_jsonl_line_is_an_item_error(line, needle):
    assert _jsonl_line(line, "p.jsonl line 3").error.startswith("p.jsonl line 3 ")
    assert needle in _jsonl_line(line, "p.jsonl line 3").error


def test_a_deep_jsonl_line_fails_its_item_in_one_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(DEEP + "\n")
    result, seconds = timed("t2i", "--prompts-file", str(prompts), "--model", str(tmp_path / "no-model"), "--seed", "1",
                            "-q", "-o", f"{tmp_path / 'out'}/")
    assert seconds < HANG_GUARD_S
    assert_one_line_error(result, 2, f"{prompts} line 1 nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)")
    assert not (tmp_path / "out").exists()


def test_a_deep_line_among_good_ones_and_the_outputs_audit_as_before(tiny_sd, tmp_path):
    """--keep-going: the deep line is a failed item with its index, the good one is drawn, and the
    manifest lists the genuine output and finds the deep line's item missing."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n' + DEEP + "\n")
    out = tmp_path / "out"
    result = run_cli("t2i", "--prompts-file", str(prompts), "--model", str(tiny_sd["epsilon"]), "--steps", "2",
                     "--seed", "3", "--keep-going", "--json", "-o", f"{out}/", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 5, result.stderr
    drawn, failed = result.records
    assert failed == {"index": 1, "input": "item 1 (line 2)", "exit_code": 2,
                      "error": f"{prompts} line 2 nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)"}
    assert "Traceback" not in result.stderr

    listing = run_cli("manifest", str(out))
    assert listing.returncode == 5
    (line,) = listing.records
    assert line["path"] == drawn["path"] and line["record"]["job"]["index"] == 0
    assert f"job {drawn['job']['id']} (t2i): 1 of 2 item(s); missing 1" in listing.stderr
    assert run_cli("info", "--json", drawn["path"]).records == [{"path": line["path"], "kind": "diffier", "record": line["record"]}]


def test_a_prompts_file_over_the_bound_is_refused_before_it_is_read(tmp_path):
    prompts = tmp_path / "huge.txt"
    with open(prompts, "wb") as sparse:
        sparse.truncate(MAX_TEXT_BYTES + 1)
    result, seconds = timed("t2i", "--prompts-file", str(prompts), "-o", f"{tmp_path / 'out'}/")
    assert seconds < HANG_GUARD_S
    assert_one_line_error(result, 2, f"--prompts-file {prompts} is over 256 MiB (MAX_TEXT_BYTES); split it")


def test_read_bytes_bounds_a_pipe_by_what_it_reads():
    assert untrusted.read_bytes(io.BytesIO(b"x" * 10), 10, "B") == b"x" * 10
    with pytest.raises(untrusted.Refused, match=r"is over 10 bytes \(B\)"):
        untrusted.read_bytes(io.BytesIO(b"x" * 11), 10, "B")


@pytest.mark.parametrize("text", ["-Infinity", "Infinity", "[1e999]", "-1e999"])
def test_non_finite_numbers_are_refused(text):
    with pytest.raises(untrusted.Refused, match="holds"):
        untrusted.loads(text)


def test_depth_bound_is_exact():
    assert untrusted.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    assert untrusted.loads('{"a": ' * MAX_JSON_DEPTH + "1" + "}" * MAX_JSON_DEPTH) is not None
    with pytest.raises(untrusted.Refused, match="nests deeper"):
        untrusted.loads('{"a": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1))
