"""`diffier eval t2i`: CLIP score per ω of baseline and refined, with each prompt's ω grid."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import assert_one_line_error, run_cli
from tests.tiny_sd import build_tokenizer
from tests.tolerance import assert_within


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIP saved as a transformers folder (config, safetensors weights, processor files)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(5)  # weights under which the test images score above CLIP score's clamp at 0
    tokenizer = build_tokenizer(folder / "tok")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def reference_clip_score(folder, image_path, text) -> float:
    """100·max(cos, 0) from CLIP's two towers, normalised here (transformers 5 wraps each tower's
    projected embedding in an output object's pooler_output)."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    inputs = processor(text=[text], images=[Image.open(image_path).convert("RGB")], return_tensors="pt", padding=True)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
        words = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output[0]
    cosine = float(image @ words) / (float(image.norm()) * float(words.norm()))
    return max(100 * cosine, 0.0)


@pytest.mark.numerics
def test_scores_every_cell_of_every_grid_and_averages_per_omega(tiny_sd, tiny_clip, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball\n")
    out = tmp_path / "eval"
    args = ["eval", "t2i", "--prompts-file", str(prompts), "--model", str(tiny_sd["epsilon"]), "--clip-model", str(tiny_clip),
            "--sweep-cfg", "1,4", "--steps", "3", "--seed", "5", "-o", str(out), "--csv", str(tmp_path / "clip.csv"), "--json"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    *rows, summary = result.records
    assert [(r["index"], r["cfg"], r["mode"]) for r in rows] == [
        (p, cfg, mode) for p in (0, 1) for cfg, mode in ((1, "baseline"), (4, "baseline"), (1, "refined"), (4, "refined"))]
    assert [r["seed"] for r in rows] == [5] * 4 + [6] * 4
    assert all(row["clip_score"] > 0 for row in rows)  # none clamped, so the comparison below means something
    for row in rows:
        # 100·cos from CLIPModel.forward's normalised float32 embeddings against the towers' embeddings
        # normalised here in float64: 4e-6 apart at worst on scores ≈ 4 (1e-6 relative); 1e-4 is 25× that.
        assert_within(row["clip_score"], reference_clip_score(tiny_clip, row["path"], row["prompt"]), atol=1e-4, what="clip score")
    for entry in summary["summary"]["mean_clip_score"]:
        for mode in ("baseline", "refined"):
            scores = [r["clip_score"] for r in rows if r["cfg"] == entry["cfg"] and r["mode"] == mode]
            assert entry[mode] == math.fsum(scores) / len(scores)  # scores.mean, exactly rounded
    assert "CLIP score" in result.stderr and "refined − baseline" in result.stderr and "00001 ω = 4 refined: CLIP score" in result.stderr
    with open(tmp_path / "clip.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [float(r["clip_score"]) for r in written] == [r["clip_score"] for r in rows]

    # Each cell is the plain t2i run of its prompt, seed and ω.
    single = run_cli("t2i", "a blue ball", "--model", str(tiny_sd["epsilon"]), "--steps", "3", "--seed", "6", "--cfg", "4",
                     "-o", str(tmp_path / "single.png"))
    assert single.returncode == 0, single.stderr
    cell = next(r["path"] for r in rows if r["index"] == 1 and r["cfg"] == 4 and r["mode"] == "refined")
    assert np.array_equal(np.asarray(Image.open(cell)), np.asarray(Image.open(tmp_path / "single.png")))
    grids = sorted(p.name for p in out.glob("*.png") if "-cfg" not in p.name)
    assert grids == ["00000-5-a-red-cube.png", "00001-6-a-blue-ball.png"]


def test_a_clip_model_missing_offline_is_exit_3_before_any_drawing(tiny_sd, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    result = run_cli("eval", "t2i", "--prompts-file", str(prompts), "--model", str(tiny_sd["epsilon"]),
                     "--clip-model", "nobody/no-such-clip", "--offline", "--steps", "2", "-o", str(tmp_path / "eval"))
    assert result.returncode == 3
    assert "cannot get CLIP model nobody/no-such-clip" in result.stderr and "hf download" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()


def test_bad_prompt_lines_and_baseline_are_usage_errors(tiny_sd, tiny_clip, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a cube"}) + "\nnot json\n")
    common = ["eval", "t2i", "--model", str(tiny_sd["epsilon"]), "--clip-model", str(tiny_clip), "-o", str(tmp_path / "e")]
    bad = run_cli(*common, "--prompts-file", str(prompts))
    assert bad.returncode == 2 and "line 2 is not JSON" in bad.stderr and "Traceback" not in bad.stderr
    repeat = run_cli(*common, "--prompts-file", str(prompts), "--sweep-cfg", "3,3")
    assert repeat.returncode == 2 and "repeats a value" in repeat.stderr


def test_iec_is_scored_against_the_same_baseline(tiny_sd, tiny_clip, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    common = ["eval", "t2i", "--prompts-file", str(prompts), "--model", str(tiny_sd["epsilon"]), "--clip-model", str(tiny_clip),
              "--sweep-cfg", "4", "--steps", "3", "--json"]
    iec = run_cli(*common, "--refiner", "iec", "--iec-steps", "first:1", "-o", str(tmp_path / "iec"))
    diffier = run_cli(*common, "-o", str(tmp_path / "diffier"))
    assert iec.returncode == 0 and diffier.returncode == 0, iec.stderr + diffier.stderr
    assert [r["mode"] for r in iec.records[:-1]] == ["baseline", "iec"]
    assert iec.records[0]["clip_score"] == diffier.records[0]["clip_score"]  # one seed, one baseline
    assert iec.records[-1]["summary"]["refiner"]["name"] == "iec" and "iec − baseline" in iec.stderr
    none = run_cli(*common, "--refiner", "none", "-o", str(tmp_path / "none"))
    assert_one_line_error(none, 2, "eval t2i compares the baseline with a refiner")
