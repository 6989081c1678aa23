"""`diffier gap`: the command's table, JSON and plot, and its option checks (the benchmark's
mathematics: tests/core/test_gap.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli


def test_the_command_prints_a_table_json_and_a_plot(tmp_path):
    plot = tmp_path / "gap.png"
    result = run_cli("gap", "--omegas", "1,3", "--steps", "5", "--n-samples", "60", "--dim", "2", "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    (record,) = result.records
    assert [(r["omega"], r["setting"]) for r in record["runs"]] == [
        (1.0, "baseline"), (1.0, "descent"), (1.0, "ascent"), (3.0, "baseline"), (3.0, "descent"), (3.0, "ascent")]
    assert record["params"]["misfit"] == "over-dispersed" and record["command"] == "gap"
    assert "Eq. 9 ω*" in result.stderr and "lowest gap at ω" in result.stderr
    assert Image.open(plot).format == "PNG" and np.asarray(Image.open(plot)).std() > 0
    again = run_cli("gap", "--omegas", "1,3", "--steps", "5", "--n-samples", "60", "--dim", "2", "--json", "-q")
    assert again.records[0]["runs"] == record["runs"]  # seeded and deterministic


@pytest.mark.parametrize(("args", "needle"), [(("--omegas", "1,x"), "comma-separated"), (("--omegas", "-1"), ">= 0"),
                                              (("--omegas", "1,nan"), "finite"), (("--misfit", "wrong"), "wrong"),
                                              (("--steps", "1000"), "less than or equal to 999"), (("--classes", "1"), "--classes"),
                                              (("--plot", "gap.jpg"), ".png file name")])
def test_bad_gap_options_exit_2(args, needle):
    result = run_cli("gap", *args)
    assert result.returncode == 2 and needle in result.stderr and len(result.stderr.splitlines()) == 1
