"""IEC through the commands: `t2i --refiner iec` (records, evaluation counts, batch independence, the
stochastic baseline it must equal), the option checks, the cfg sweep's iec rows and `gap --refiner iec`.
The update rule itself is tested in tests/core/test_iec.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.helpers import assert_one_line_error, pixels, run_cli

STEPS = 4


def t2i(model, out, *extra):
    return run_cli("t2i", "a red bicycle", "--model", str(model), "--steps", str(STEPS), "-o", str(out), "--json", "-q", *extra)


def test_t2i_iec_records_its_settings_and_counts(tiny_sd, tmp_path, monkeypatch):
    from models.sd import StableDiffusion

    calls = []
    predict = StableDiffusion.predict
    monkeypatch.setattr(StableDiffusion, "predict", lambda self, *a: calls.append(1) or predict(self, *a))
    iec = ("--refiner", "iec", "--iec-tol", "0", "--iec-steps", "first-last:1")
    first = t2i(tiny_sd["epsilon"], tmp_path / "a.png", "--seed", "3", *iec)
    assert first.returncode == 0, first.stderr
    assert len(calls) == STEPS + 2 * 2  # N + (K − 1)|S|, S = the first and the last step
    again = t2i(tiny_sd["epsilon"], tmp_path / "b.png", "--seed", "3", *iec)
    base = t2i(tiny_sd["epsilon"], tmp_path / "c.png", "--seed", "3", "--refiner", "none")
    for result in (again, base):
        assert result.returncode == 0, result.stderr
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))
    assert not np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "c.png"))

    (record,) = first.records
    assert record["mode"] == "iec" and base.records[0]["mode"] == "baseline"
    assert record["refiner"] == {"name": "iec", "variant": "ldm", "iters": 3, "gamma": 0.5, "tol": 0.0,
                                 "steps": "first-last:1", "weights": [1.0, 0.5]}
    assert record["refinement"]["per_step"]["evaluations"] == [3, 1, 1, 3]
    assert record["refinement"]["summary"]["model_evaluations"] == STEPS + 2 * 2
    from PIL import Image

    text = Image.open(tmp_path / "a.png").text["parameters"]
    assert "Refiner: IEC" in text and 'IEC steps: "first-last:1"' in text and "DiffIER" not in text


def test_t2i_iec_items_do_not_depend_on_the_batch(tiny_sd, tmp_path):
    iec = ("--refiner", "iec", "--iec-variant", "ddpm", "--iec-iters", "4", "--iec-tol", "3e-3", "--seed", "20", "--num-images", "2",
           "--batch-invariant")
    one = t2i(tiny_sd["epsilon"], f"{tmp_path / 'b1'}/", *iec)
    both = t2i(tiny_sd["epsilon"], f"{tmp_path / 'b2'}/", *iec, "--batch-size", "2")
    assert one.returncode == 0 and both.returncode == 0, one.stderr + both.stderr
    for a, b in zip(one.records, both.records):
        assert np.array_equal(pixels(a["path"]), pixels(b["path"]))
        assert a["refinement"]["per_step"] == b["refinement"]["per_step"]
    stopped = {tuple(r["refinement"]["per_step"]["corrections"]) for r in one.records}
    assert len(stopped) > 1  # the items converged at different corrections
    assert one.records[0]["refiner"]["variant"] == "ddpm" and one.records[0]["refiner"]["weights"] == [0.5, 0.25, 0.125]


def test_t2i_iec_with_an_x_independent_model_equals_the_stochastic_baseline(tiny_sd, tmp_path, monkeypatch):
    from models.sd import StableDiffusion

    monkeypatch.setattr(StableDiffusion, "predict", lambda self, x, t, state: torch.full_like(x, 0.3))
    common = ("--seed", "4", "--ddim-eta", "0.8")
    base = t2i(tiny_sd["epsilon"], tmp_path / "base.png", *common, "--baseline")
    iec = t2i(tiny_sd["epsilon"], tmp_path / "iec.png", *common, "--refiner", "iec", "--iec-tol", "0")
    assert base.returncode == 0 and iec.returncode == 0, base.stderr + iec.stderr
    assert np.array_equal(pixels(tmp_path / "base.png"), pixels(tmp_path / "iec.png"))


@pytest.mark.parametrize(("extra", "needle"), [
    (("--baseline", "--refiner", "iec"), "--baseline is --refiner none"),
    (("--baseline", "--refiner", "diffier"), "--baseline is --refiner none"),
    (("--iec-iters", "2"), "add --refiner iec"),
    (("--refiner", "none", "--iec-variant", "ddpm"), "add --refiner iec"),
    (("--refiner", "iec", "--max-iters", "2"), "--max-iters sets DiffIER"),
    (("--refiner", "iec", "--iec-steps", "middle:3"), "--iec-steps 'middle:3'"),
    (("--refiner", "iec", "--iec-steps", "every:0"), "--iec-steps 'every:0'"),
    (("--refiner", "iec", "--iec-gamma", "0"), "0 is outside (0, 1]"),
    (("--refiner", "iec", "--sweep-eta", "0.1,0.2"), "--sweep-eta sweeps a DiffIER setting; with --refiner iec sweep ω"),
    (("--refiner", "maybe",), "maybe"),
])
def test_contradictory_refiner_options_exit_2(tiny_sd, tmp_path, extra, needle):
    result = run_cli("t2i", "a cat", "--model", str(tiny_sd["epsilon"]), "-o", str(tmp_path / "x.png"), *extra)
    assert_one_line_error(result, 2, needle)
    assert not (tmp_path / "x.png").exists()


def test_the_cfg_sweep_takes_iec_rows_and_each_cell_is_the_plain_run(tiny_sd, tmp_path):
    model = str(tiny_sd["epsilon"])
    common = ("t2i", "a red bicycle", "--model", model, "--steps", "3", "--seed", "4", "--refiner", "iec", "--iec-steps", "first:1")
    grid = tmp_path / "grid.png"
    result = run_cli(*common, "--sweep-cfg", "1,3", "-o", str(grid), "--json")
    assert result.returncode == 0, result.stderr
    assert [(r["sweep"]["value"], r["mode"]) for r in result.records] == [(1, "baseline"), (3, "baseline"), (1, "iec"), (3, "iec")]
    single = run_cli(*common, "--cfg", "3", "-o", str(tmp_path / "single.png"))
    assert single.returncode == 0, single.stderr
    assert np.array_equal(pixels(tmp_path / "grid-cfg3-iec.png"), pixels(tmp_path / "single.png"))
    from PIL import Image

    assert json.loads(Image.open(grid).text["diffier"])["sweep"]["refiner"]["name"] == "iec"


def test_gap_takes_iec_and_measures_the_relaxed_eps(tmp_path):
    common = ("gap", "--omegas", "1,3", "--steps", "5", "--n-samples", "40", "--dim", "2", "--json", "-q")
    result = run_cli(*common, "--refiner", "iec", "--iec-variant", "ddpm")
    assert result.returncode == 0, result.stderr
    (record,) = result.records
    assert [r["setting"] for r in record["runs"]] == ["baseline", "iec"] * 2
    assert record["params"]["iec"]["variant"] == "ddpm" and record["params"]["diffier"] is False
    both = run_cli(*common, "--refiner", "diffier", "--refiner", "iec", "--iec-variant", "ddpm").records[0]
    assert [r["setting"] for r in both["runs"]] == ["baseline", "descent", "ascent", "iec"] * 2
    assert [r for r in both["runs"] if r["setting"] in ("baseline", "iec")] == record["runs"]
    assert all(not math.isclose(a["gap"], b["gap"]) for a, b in zip(record["runs"][::2], record["runs"][1::2]))
    assert_one_line_error(run_cli(*common, "--iec-iters", "2"), 2, "--iec-iters sets iec's rows")
    assert_one_line_error(run_cli(*common, "--refiner", "iec", "--eta", "0.1"), 2, "--eta sets diffier's rows")
