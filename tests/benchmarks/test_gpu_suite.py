"""benchmarks/gpu_suite.py's CPU mode, so that the GPU suite cannot rot between the sessions that
have a GPU: every section runs on the tiny models, and what it must find on any machine holds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"
ROWS = ("`--baseline` / StableDiffusionPipeline", "refined / `--baseline`", "refinement's share of a step",
        "tool overhead per item", "`--batch-invariant`", "tts real-time factor", "sr 4× of 32²", "sr 4× of 96²",
        "`--compile` batch 1", "`--compile` batch 2")


def test_quick_mode_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "suite.md"
    done = subprocess.run([sys.executable, str(SUITE), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    table = out.read_text()
    assert table in done.stdout + "\n"  # the same table printed and written
    for row in ROWS:
        assert row in table, row
    assert "failed" not in table and "not run" not in table

    results = json.loads(out.with_suffix(".json").read_text())
    # One image through diffier's loop is the pipeline's arithmetic exactly (float32, same kernels).
    assert results["t2i"]["batch 1"]["identical_pixels_baseline_vs_pipeline"] is True
    # The batch-invariant mode's defining property, and the batched kernels' rounding it removes.
    assert results["batch_invariant"]["batch_of_4_vs_alone_max_abs"]["invariant"] == 0
    # A compiled model gives the same bytes on its second run, and stays within a few levels of eager,
    # at each batch size (the second compiles its own static shapes).
    assert [results["compile"][f"batch {b}"]["repeat_identical"] for b in (1, 2)] == [True, True]
    # Fused float32 kernels move values by rounding (~1e-6 relative) that 4 steps of the tiny model
    # amplify far less than one uint8 level (1/255 ≈ 4e-3); a value already at a rounding boundary can
    # flip by one level, so 2 levels bound it with room.
    assert max(results["compile"][f"batch {b}"]["max_pixel_diff_vs_eager"] for b in (1, 2)) <= 2
    assert all(outcome["outcome"] == "ok" for outcome in results["sr"].values())
    assert results["tts"]["audio_s"] > 0
    times = [*results["t2i"]["batch 1"]["wall_s"].values(), results["job"]["wall_s"], *results["tts"]["wall_s"].values()]
    assert all(math.isfinite(t) and t > 0 for t in times)


def test_cuda_without_a_gpu_is_refused_in_one_line():
    done = subprocess.run([sys.executable, str(SUITE)], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    assert "no CUDA device here; run with --device cpu --quick" in done.stderr.splitlines()[-1]
