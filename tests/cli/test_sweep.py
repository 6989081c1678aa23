"""`diffier t2i --sweep-*`: the labelled baseline/refined grid and its cells."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffier_cli.grid import LABEL_HEIGHT, ROW_LABEL_WIDTH as MARGIN
from tests.helpers import pixels, run_cli


def common(model) -> list[str]:
    return ["t2i", "a red bicycle", "--model", str(model), "--steps", "3", "--seed", "4"]


def test_cfg_grid_cells_are_the_single_runs_and_sit_in_the_grid(tiny_sd, tmp_path):
    model = tiny_sd["epsilon"]
    grid = tmp_path / "grid.png"
    result = run_cli(*common(model), "--sweep-cfg", "1,3", "-o", str(grid), "--json")
    assert result.returncode == 0, result.stderr
    assert [(r["sweep"]["value"], r["mode"]) for r in result.records] == [
        (1.0, "baseline"), (3.0, "baseline"), (1.0, "refined"), (3.0, "refined")]
    single = run_cli(*common(model), "--cfg", "3", "-o", str(tmp_path / "single.png"))
    base = run_cli(*common(model), "--cfg", "1", "--baseline", "-o", str(tmp_path / "base.png"))
    assert single.returncode == 0 and base.returncode == 0
    assert np.array_equal(pixels(tmp_path / "grid-cfg3-refined.png"), pixels(tmp_path / "single.png"))
    assert np.array_equal(pixels(tmp_path / "grid-cfg1-baseline.png"), pixels(tmp_path / "base.png"))

    image = pixels(grid)
    size = 32
    assert image.shape == (LABEL_HEIGHT + 2 * size, MARGIN + 2 * size, 3)
    for row, mode in enumerate(("baseline", "refined")):
        for column, value in enumerate(("1", "3")):
            top, left = LABEL_HEIGHT + row * size, MARGIN + column * size
            assert np.array_equal(image[top : top + size, left : left + size], pixels(tmp_path / f"grid-cfg{value}-{mode}.png"))
    record = json.loads(Image.open(grid).text["diffier"])
    assert record["sweep"]["parameter"] == "cfg" and len(record["cells"]) == 4
    assert record["cells"][0]["file"] == "grid-cfg1-baseline.png"  # beside the grid: names, not paths
    # The grid's infotext: the first refined cell's, with the axes as A1111's X/Y/Z plot writes them.
    cell_text = Image.open(tmp_path / "grid-cfg1-refined.png").text["parameters"]
    grid_text = Image.open(grid).text["parameters"]
    axes = 'Script: X/Y/Z plot, X Type: CFG Scale, X Values: "1, 3", Y Type: DiffIER, Y Values: "baseline, refined", '
    assert grid_text == cell_text.replace("Version: ", axes + "Version: ")
    assert json.loads(Image.open(tmp_path / "grid-cfg3-refined.png").text["diffier"])["params"]["cfg"] == 3.0


def test_iteration_sweep_has_one_baseline_and_refines_with_each_count(tiny_sd, tmp_path):
    result = run_cli(*common(tiny_sd["epsilon"]), "--sweep-iters", "1,2", "-o", str(tmp_path / "it.png"), "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["it-baseline.png", "it-iters1-refined.png", "it-iters2-refined.png", "it.png"]
    refined = [r for r in result.records if r["mode"] == "refined"]
    assert [r["refiner"]["max_iters"] for r in refined] == [1, 2]
    assert [max(r["refinement"]["per_step"]["iterations"]) for r in refined] == [1, 2]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--sweep-cfg", "3,5", "--baseline"), "drop --baseline"),
        (("--sweep-cfg", "3,5", "--num-images", "2"), "one PROMPT"),
        (("--sweep-cfg", "3,5", "--sweep-eta", "0.1"), "one thing at a time"),
        (("--sweep-iters", "1,2.5"), "whole numbers"),
        (("--sweep-eta", "0.1,x"), "comma-separated"),
        (("--sweep-iters", "1,nan"), "finite"),
        (("--sweep-cfg", "7.5,7.5000001"), "too close"),
        (("--sweep-cfg", "3,5", "--name", "x"), "drop --name"),
    ],
)
def test_bad_sweeps_exit_2(tmp_path, args, needle):
    result = run_cli("t2i", "p", "-o", str(tmp_path / "g.png"), *args)
    assert result.returncode == 2 and needle in result.stderr and len(result.stderr.splitlines()) == 1
    assert not list(tmp_path.iterdir())
