"""`diffier sr` end to end on tiny StableSR checkpoints saved in the official formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from tests.helpers import SR_SMALL, assert_one_line_error, run_cli
from tests.tiny_stablesr import HarmlessCallback, text_tower_state
from tests.tolerance import assert_within


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), "RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nSteps: 20, Sampler: DDIM, Seed: 5")
    rgb.save(folder / "rgb.png", pnginfo=info)
    Image.fromarray(rng.integers(0, 256, (8, 12, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").save(folder / "square.png")
    return folder


def sr(tiny, source, out, *extra):
    return run_cli("sr", str(source), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tiny["vae"]), *SR_SMALL,
                   "-o", str(out), "--json", *extra)


def test_refined_differs_reproduces_and_keeps_provenance(tiny, images, tmp_path):
    runs = {name: sr(tiny, images / "rgb.png", tmp_path / f"{name}.png", "--seed", "2", *extra)
            for name, extra in {"r1": (), "r2": (), "b1": ("--baseline",), "b2": ("--baseline",)}.items()}
    for result in runs.values():
        assert result.returncode == 0, result.stderr
    pixels = {name: np.asarray(Image.open(tmp_path / f"{name}.png")) for name in runs}
    assert pixels["r1"].shape == (32, 48, 3)  # exactly input × 4
    assert np.array_equal(pixels["r1"], pixels["r2"]) and np.array_equal(pixels["b1"], pixels["b2"])
    assert not np.array_equal(pixels["r1"], pixels["b1"])

    text = Image.open(tmp_path / "r1.png").text
    assert text["parameters"] == "a castle\nSteps: 20, Sampler: DDIM, Seed: 5"  # the input's chunk, untouched
    assert "StableSR upscale: 4" in text["postprocessing"] and "DiffIER: refined" in text["postprocessing"]
    record = json.loads(text["diffier"])
    (printed,) = runs["r1"].records
    assert {k: v for k, v in printed.items() if k not in ("path", "wall_time_s")} == record
    png = tmp_path / "r1.png"
    assert run_cli("info", "--json", str(png)).records == [{"path": str(png), "kind": "diffier", "record": record}]
    assert run_cli("info", "--json", str(images / "rgb.png")).records == [  # an A1111-only PNG, read by sd-parsers
        {"path": str(images / "rgb.png"), "kind": "a1111", "record": {"prompt": "a castle", "seed": 5, "steps": 20, "sampler": "DDIM"}}]
    missing = run_cli("info", str(tmp_path / "nope.png"))
    assert_one_line_error(missing, 2, "no such file")
    assert record["output_size"] == [48, 32] and record["input_size"] == [12, 8]
    assert record["params"]["sampler"] == "ddpm" and record["params"]["steps"] == 3
    assert record["params"]["dec_w"] == 0.5 and record["params"]["color_fix"] == "adain"
    assert record["refinement"]["per_step"]["iterations"] == [1, 1, 1]
    assert len(record["model"]["checkpoint"]["sha256"]) == 64
    # Names, never the user's folders (--record-paths keeps them: tests/cli/test_t2i_cli.py).
    assert record["model"]["checkpoint"]["file"] == Path(tiny["ckpt"]).name and "path" not in record["model"]["checkpoint"]
    assert str(Path(tiny["ckpt"]).parent) not in text["diffier"]


def test_alpha_and_grayscale_are_kept(tiny, images, tmp_path):
    rgba = sr(tiny, images / "rgba.png", tmp_path / "a.png", "--seed", "1", "--sampler", "ddim", "--color-fix", "wavelet")
    gray = sr(tiny, images / "gray.png", tmp_path / "g.png", "--seed", "1", "--scale", "2")
    assert rgba.returncode == 0 and gray.returncode == 0, rgba.stderr + gray.stderr
    out = Image.open(tmp_path / "a.png")
    assert out.mode == "RGBA" and out.size == (48, 32)
    expected_alpha = Image.open(images / "rgba.png").getchannel("A").resize((48, 32), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(expected_alpha))
    assert Image.open(tmp_path / "g.png").mode == "L" and Image.open(tmp_path / "g.png").size == (14, 18)


@pytest.mark.numerics
def test_baseline_equals_the_sampler_written_out(tiny, images, tmp_path):
    """One tile, dec_w 0, no colour fix: the CLI must equal the official DDPM path spelled out here
    with the modules themselves (x_T = q_sample(z_LR, 999); struct features and UNet at t_orig)."""
    from pathlib import Path

    import torch.nn.functional as F

    from models.stablesr.adapter import StableSR
    from models.stablesr.schedule import RespacedDDPM

    result = sr(tiny, images / "square.png", tmp_path / "one.png", "--seed", "9", "--baseline", "--dec-w", "0", "--color-fix", "none",
                "--tile-size", "256", "--scale", "4")
    assert result.returncode == 0, result.stderr

    model = StableSR.load(Path(tiny["ckpt"]), Path(tiny["vae"]), prediction_type="epsilon", device=torch.device("cpu"), dtype=torch.float32)
    lr = torch.from_numpy(np.asarray(Image.open(images / "square.png").convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    work = (256, 256)  # the 32-px output is upscaled 8× so that it covers one 256-px tile
    upscaled = F.interpolate(lr, size=work, mode="bicubic", align_corners=False).clamp(-1, 1)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        latent, enc_fea = model.cfw.encode(upscaled, generator)
        z_lr = latent * model.cfw.vae.config.scaling_factor
        ddpm = RespacedDDPM(3)
        x = ddpm.q_sample(z_lr, torch.randn(z_lr.shape, generator=generator))
        for t in ddpm.timesteps.tolist():
            time = torch.tensor([t])
            with model.struct.provided(model.encoder(z_lr, time)):
                eps = model.unet(x, time, encoder_hidden_states=model.context).sample
            x = ddpm.step(eps, t, x, torch.randn(x.shape, generator=generator))
        image = model.cfw.decode(x / model.cfw.vae.config.scaling_factor, enc_fea, 0.0)
        image = F.interpolate(image.clamp(-1, 1), size=(32, 32), mode="bicubic", align_corners=False)
    expected = ((image[0].clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 0).to(torch.uint8).numpy()
    ours = np.asarray(Image.open(tmp_path / "one.png"))
    # Not bit-exact on every kernel set (2 threads under avx2 differ in the last float32 bits), and a
    # difference of ~1e-6 flips a uint8 level only for a value within ~1e-4 of a level boundary: so at
    # most one level, on at most 1% of the pixels (one pixel of 3072 seen). Any change to the sampling
    # itself moves most pixels by many levels.
    assert_within(ours, expected, atol=1, what="pixels")
    assert_within(np.mean(ours != expected), 0.0, atol=0.01, what="fraction of pixels off")


@pytest.mark.numerics
def test_empty_prompt_embedding_equals_the_open_clip_forward():
    """transformers' CLIPTextModel via diffusers' converter vs the OpenCLIP text tower written out
    (nn.MultiheadAttention with the packed in_proj, causal mask, GELU MLP), penultimate + ln_final."""
    from models.stablesr.text_embedding import PREFIX, empty_prompt_embedding, empty_prompt_ids, load_text_model

    state = text_tower_state(width=64, blocks=3, seed=4)
    ours = empty_prompt_embedding(load_text_model(state))

    ids = empty_prompt_ids(77)
    x = state[PREFIX + "token_embedding.weight"][ids] + state[PREFIX + "positional_embedding"]
    mask = torch.full((77, 77), float("-inf")).triu(1)
    with torch.no_grad():
        for i in range(2):  # all but the last of the 3 blocks
            p = f"{PREFIX}transformer.resblocks.{i}."
            attention = torch.nn.MultiheadAttention(64, 1, batch_first=True)
            attention.in_proj_weight.copy_(state[p + "attn.in_proj_weight"])
            attention.in_proj_bias.copy_(state[p + "attn.in_proj_bias"])
            attention.out_proj.weight.copy_(state[p + "attn.out_proj.weight"])
            attention.out_proj.bias.copy_(state[p + "attn.out_proj.bias"])
            h = F_layer_norm(x, state, p + "ln_1")
            x = x + attention(h, h, h, attn_mask=mask, need_weights=False)[0]
            h = F_layer_norm(x, state, p + "ln_2")
            h = torch.nn.functional.gelu(h @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"])
            x = x + h @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
        expected = F_layer_norm(x, state, PREFIX + "ln_final")
    # transformers' CLIP text model against nn.MultiheadAttention: float32 sums in other orders, 9.5e-7
    # apart at worst on layer-normed values ≤ 3.1 (3e-7 relative). 1e-5 of max|value| is 30× that;
    # the penultimate layer's output skipping ln_final, or the last layer's, is off by O(1).
    assert_within(ours, expected, atol=1e-5 * expected.abs().max(), what="embedding")


def F_layer_norm(x, state, name):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"])


@pytest.mark.parametrize(("content", "needle"), [(b"not an image at all", "not a readable image"),
                                                 (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not a readable image")])
def test_unreadable_inputs_exit_2(tmp_path, content, needle):
    source = tmp_path / "in.png"
    source.write_bytes(content)
    result = run_cli("sr", str(source), "-o", str(tmp_path / "out.png"), "-q")
    assert_one_line_error(result, 2, needle)
    assert not (tmp_path / "out.png").exists()


def test_too_large_output_exits_2(tmp_path):
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")  # × 32 = 9600² px, over the 67 MP budget
    result = run_cli("sr", str(tmp_path / "big.png"), "--scale", "32", "-o", str(tmp_path / "out.png"), "-q")
    assert_one_line_error(result, 2, "MP budget")
    beyond = run_cli("sr", str(tmp_path / "big.png"), "--scale", "2000", "-o", str(tmp_path / "out.png"), "-q")
    assert_one_line_error(beyond, 2, "--scale", "(0, 32]")


def test_missing_weights_offline_and_wrong_checkpoint_exit_3(images, tmp_path):
    offline = run_cli("sr", str(images / "rgb.png"), "--offline", "--cache-dir", str(tmp_path / "hub"), "-o", str(tmp_path / "a.png"), "-q")
    assert_one_line_error(offline, 3, "Iceclear/StableSR", "--ckpt")
    wrong = tmp_path / "grad-tts.pt"
    torch.save({"encoder.emb.weight": torch.zeros(2, 2)}, wrong)
    result = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(wrong), "--vae-ckpt", str(wrong), "-o", str(tmp_path / "a.png"), "-q")
    assert_one_line_error(result, 3)
    assert not (tmp_path / "a.png").exists()


def test_a_checkpoint_without_its_text_tower_exits_3(tiny, images, tmp_path):
    import shutil

    state = torch.load(tiny["ckpt"], weights_only=True)["state_dict"]
    partial = tmp_path / "no-text.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}}, partial)
    shutil.copyfile(f"{tiny['ckpt']}.config.json", f"{partial}.config.json")
    result = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(partial), "--vae-ckpt", str(tiny["vae"]), "-o", str(tmp_path / "a.png"), "-q")
    assert_one_line_error(result, 3, "text encoder")


def test_convert_to_safetensors_then_load_gives_the_same_image(tiny, images, tmp_path):
    converted = tmp_path / "stablesr_tiny.safetensors"
    result = run_cli("convert", str(tiny["ckpt"]), str(converted))
    assert result.returncode == 0, result.stderr
    original = sr(tiny, images / "rgb.png", tmp_path / "a.png", "--seed", "4", "--baseline")
    again = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(converted), "--vae-ckpt", str(tiny["vae"]), *SR_SMALL,
                    "-o", str(tmp_path / "b.png"), "--seed", "4", "--baseline", "-q")
    assert original.returncode == 0 and again.returncode == 0, original.stderr + again.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


def test_odd_sizes_come_out_exactly_scaled(tiny, tmp_path):
    source = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (77, 123, 3), dtype=np.uint8), "RGB").save(source)
    result = sr(tiny, source, tmp_path / "odd-x4.png", "--seed", "1", "--steps", "1")
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "odd-x4.png").size == (492, 308)


@pytest.mark.numerics
def test_tiling_is_invisible_to_a_position_independent_model():
    """Stitching per-tile outputs of an elementwise model gives that model applied to the whole canvas."""
    from models.stablesr.tiling import gaussian_tile_weights, stitch_tiles, tile_slices

    canvas = torch.randn(1, 4, 20, 37, generator=torch.Generator().manual_seed(0))
    slices = tile_slices(canvas.shape, 8, 4)
    outputs = [torch.tanh(canvas[..., rows, cols]) for rows, cols in slices]
    stitched = stitch_tiles(outputs, slices, canvas.shape, gaussian_tile_weights(8))
    assert len(slices) > 10
    # Σ w·tanh / Σ w over ≤ 6 overlapping tiles, float64 weights accumulated in float32: a few ulp of
    # |tanh| ≤ 1 (2.4e-7 seen). 4e-6 is 17× that; a tile's weights or offset wrong moves values by O(0.1).
    assert_within(stitched, torch.tanh(canvas), atol=4e-6, what="stitched")


class _Payload:
    """Unpickling this would run a shell command; the safe loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import subprocess

        return subprocess.call, (["touch", str(self.marker)],)


def test_a_checkpoint_with_a_pickled_callable_is_refused_with_exit_3(images, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Payload(marker), "global_step": 1}, evil)
    result = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(evil), "--vae-ckpt", str(evil), "-o", str(tmp_path / "a.png"), "-q")
    assert_one_line_error(result, 3)
    assert not marker.exists() and not (tmp_path / "a.png").exists()


@pytest.mark.numerics
def test_negative_prompt_guidance_on_the_ddim_path(tiny, images, tmp_path):
    ddim = ("--sampler", "ddim", "--seed", "3", "--tokenizer", str(tiny["tokenizer"]), "--baseline")
    plain = sr(tiny, images / "rgb.png", tmp_path / "plain.png", *ddim[:4], "--baseline")
    unit = sr(tiny, images / "rgb.png", tmp_path / "unit.png", *ddim, "--negative-prompt", "blurry, jpeg", "--cfg", "1")
    strong = sr(tiny, images / "rgb.png", tmp_path / "strong.png", *ddim, "--negative-prompt", "blurry, jpeg")
    for result in (plain, unit, strong):
        assert result.returncode == 0, result.stderr
    pixels = {name: np.asarray(Image.open(tmp_path / f"{name}.png")).astype(int) for name in ("plain", "unit", "strong")}
    # ω = 1 is the conditional branch alone: ε_∅ + 1·(ε_c − ε_∅) equals ε_c up to float32 rounding, so
    # at most one level on at most 1% of the pixels (as in test_baseline_equals_the_sampler_written_out).
    assert_within(pixels["unit"], pixels["plain"], atol=1, what="pixels")
    assert_within(np.mean(pixels["unit"] != pixels["plain"]), 0.0, atol=0.01, what="fraction of pixels off")
    assert np.abs(pixels["strong"] - pixels["plain"]).max() > 1
    (record,) = strong.records
    assert record["params"]["negative_prompt"] == "blurry, jpeg" and record["params"]["cfg"] == 7.0


def test_guidance_options_are_checked(images, tmp_path):
    ddpm = run_cli("sr", str(images / "rgb.png"), "--negative-prompt", "blurry", "-o", str(tmp_path / "a.png"), "-q")
    assert_one_line_error(ddpm, 2, "--sampler ddim")
    bare = run_cli("sr", str(images / "rgb.png"), "--sampler", "ddim", "--cfg", "5", "-o", str(tmp_path / "a.png"), "-q")
    assert_one_line_error(bare, 2, "--negative-prompt")


def test_large_images_run_as_blended_pixel_tiles(tiny, tmp_path):
    source = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (30, 45, 3), dtype=np.uint8), "RGB").save(source)
    tiled = sr(tiny, source, tmp_path / "tiled.png", "--seed", "1", "--steps", "1", "--pixel-tile", "128", "--pixel-stride", "96")
    whole = sr(tiny, source, tmp_path / "whole.png", "--seed", "1", "--steps", "1")
    assert tiled.returncode == 0 and whole.returncode == 0, tiled.stderr + whole.stderr
    (record,) = tiled.records
    # 180×120 padded to 192×128: one row of 128-px tiles, at columns 0 and 64
    assert record["params"]["pixel_tiles"] == 2 and len(record["refinement"]["per_pixel_tile"]) == 2
    # one layout in every command: per_step holds every step the image took, the tiles' in order
    tiles = record["refinement"]["per_pixel_tile"]
    assert record["refinement"]["per_step"]["iterations"] == tiles[0]["iterations"] + tiles[1]["iterations"]
    assert record["refinement"]["summary"]["steps"] == 2
    assert Image.open(tmp_path / "tiled.png").size == Image.open(tmp_path / "whole.png").size == (180, 120)


def test_pixel_patches_cover_the_image_with_the_last_flush():
    from diffier_cli.sr import pixel_patches

    patches = pixel_patches(1500, 3000, 1280, 1000)
    assert [(r.start, r.stop) for r, _ in patches[::3]] == [(0, 1280), (220, 1500)]
    assert sorted({(c.start, c.stop) for _, c in patches}) == [(0, 1280), (1000, 2280), (1720, 3000)]
    assert pixel_patches(600, 700, 1280, 1000) == [(slice(0, 600), slice(0, 700))]


def test_palette_16_bit_and_low_precision_inputs(tiny, tmp_path):
    palette = Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8), dtype=np.uint8), "L").convert("P")
    palette.info["transparency"] = 3
    palette.save(tmp_path / "p.png", transparency=3)
    deep = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    deep.save(tmp_path / "deep.png")
    p = sr(tiny, tmp_path / "p.png", tmp_path / "p-x4.png", "--seed", "1", "--steps", "1")
    d = sr(tiny, tmp_path / "deep.png", tmp_path / "d-x4.png", "--seed", "1", "--steps", "1", "--color-fix", "none", "--dec-w", "0")
    bf16 = sr(tiny, tmp_path / "deep.png", tmp_path / "b-x4.png", "--seed", "1", "--steps", "1", "--dtype", "bfloat16")
    for result in (p, d, bf16):
        assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "p-x4.png").mode == "RGBA"
    out = np.asarray(Image.open(tmp_path / "d-x4.png"))
    assert Image.open(tmp_path / "d-x4.png").mode == "L" and out.std() > 0  # not clipped to one value


# --- batch jobs: folders, --recursive, --keep-going, shards, --skip-existing ----------------------

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same CPU thread count in every process: identical rounding


def sr_batch(tiny, *args):
    return run_cli("sr", *args, "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tiny["vae"]), *SR_SMALL, "--steps", "1",
                   "--seed", "7", "--recursive", "--json", env=ONE_THREAD)


def written(folder) -> dict[str, np.ndarray]:
    return {path.relative_to(folder).as_posix(): np.asarray(Image.open(path)) for path in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Items in sorted order: 0 a.png, 1 bad/cut.png (truncated after its header), 2 bad/x.png (not an
    image), 3 sub/b.jpg, 4 sub/deep/c.png; a hidden file and a text file are not items."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(3)
    for rel, suffix in (("a", ".png"), ("sub/b", ".jpg"), ("sub/deep/c", ".png")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), "RGB").save(root / f"{rel}{suffix}")
    (root / "bad").mkdir()
    (root / "bad" / "cut.png").write_bytes((root / "a.png").read_bytes()[:60])
    (root / "bad" / "x.png").write_bytes(b"not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    (root / "notes.txt").write_text("not an input")
    return root


@pytest.fixture(scope="module")
def whole_tree(tiny, tree, tmp_path_factory):
    """One unsharded --keep-going run over the tree."""
    out = tmp_path_factory.mktemp("whole")
    return sr_batch(tiny, str(tree), "-o", f"{out}/", "--keep-going"), out


def test_a_folder_tree_keeps_its_layout_and_keeps_going_past_bad_images(tiny, tree, whole_tree, tmp_path):
    result, out = whole_tree
    assert result.returncode == 5, result.stderr
    assert sorted(written(out)) == ["a-x4-refined.png", "sub/b-x4-refined.png", "sub/deep/c-x4-refined.png"]
    last = result.stderr.splitlines()[-1]
    assert last.startswith("diffier: error: 2 of 5 item(s) failed (3 written)")
    assert f"{tree}/bad/cut.png" in last and f"{tree}/bad/x.png" in last
    failures = [record for record in result.records if "error" in record]
    assert [(r["index"], r["input"], r["exit_code"]) for r in failures] == [(1, f"{tree}/bad/cut.png", 2), (2, f"{tree}/bad/x.png", 2)]
    records = [record for record in result.records if "path" in record]
    assert [(r["index"], r["seed"], r["input"]) for r in records] == [
        (0, 7, f"{tree}/a.png"), (3, 10, f"{tree}/sub/b.jpg"), (4, 11, f"{tree}/sub/deep/c.png")]
    assert {r["job"]["count"] for r in records} == {5} and [r["job"]["index"] for r in records] == [0, 3, 4]
    assert len({r["job"]["id"] for r in records}) == 1
    png = out / "sub" / "b-x4-refined.png"
    shown = run_cli("info", "--json", str(png)).records
    assert shown == [{"path": str(png), "kind": "diffier", "record": {k: v for k, v in records[1].items() if k not in ("path", "wall_time_s")}}]

    stopped = sr_batch(tiny, str(tree), "-o", f"{tmp_path}/", "-q")  # no --keep-going: stops at item 1
    assert_one_line_error(stopped, 2, f"{tree}/bad/cut.png: not a readable image")
    assert sorted(written(tmp_path)) == ["a-x4-refined.png"]


def test_two_shards_equal_one_run_and_skip_existing_then_makes_nothing(tiny, tree, whole_tree, tmp_path):
    result, whole = whole_tree
    shards = [sr_batch(tiny, str(tree), "-o", f"{tmp_path}/", "--keep-going", "--shard", f"{k}/2") for k in (0, 1)]
    assert [shard.returncode for shard in shards] == [5, 0], shards[0].stderr + shards[1].stderr  # bad/* are in shard 0
    assert "3 of 5 item(s) to make (shard 0/2, from --shard)" in shards[0].stderr
    assert sorted(written(tmp_path)) == sorted(written(whole))
    for name, pixels in written(whole).items():
        assert np.array_equal(written(tmp_path)[name], pixels), name
    job_ids = {record["job"]["id"] for run in (result, *shards) for record in run.records if "job" in record}
    assert len(job_ids) == 1

    # The sub-tree of the whole run is complete: resuming it makes nothing and loads no model.
    again = sr_batch(tiny, str(tree / "sub"), "-o", f"{whole}/sub/", "--skip-existing")
    assert again.returncode == 0 and again.records == [], again.stderr
    assert "0 of 2 item(s) to make, 2 already done" in again.stderr and "loading" not in again.stderr


def test_inputs_are_checked_before_any_model_loads(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "empty" / "sub" / "deep.png")
    assert_one_line_error(run_cli("sr", str(tmp_path / "empty"), "-q"), 2, "holds no images", "--recursive")
    assert_one_line_error(run_cli("sr", str(tmp_path / "nope.png"), "-q"), 2, "no such image or folder")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    clash = run_cli("sr", str(tmp_path / "a.png"), str(tmp_path / "a.jpg"), "-o", f"{tmp_path}/out/", "-q")
    assert_one_line_error(clash, 2, "items 0 and 1 would both be written", "--name")


# --- sr --compare ------------------------------------------------------------------------------


def test_compare_writes_both_runs_and_the_side_by_side(tiny, images, tmp_path):
    from diffier_cli.grid import LABEL_HEIGHT, ROW_LABEL_WIDTH

    out = tmp_path / "cmp"
    result = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tiny["vae"]), *SR_SMALL,
                     "--seed", "3", "--compare", "--crop", "4,2,8,6", "-o", f"{out}/", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["rgb-x4-baseline.png", "rgb-x4-compare.png", "rgb-x4-refined.png"]
    assert [r["mode"] for r in result.records] == ["baseline", "refined"]
    for mode, extra in (("baseline", ("--baseline",)), ("refined", ())):
        single = sr(tiny, images / "rgb.png", tmp_path / f"{mode}.png", "--seed", "3", *extra)
        assert single.returncode == 0, single.stderr
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{mode}.png")), np.asarray(Image.open(out / f"rgb-x4-{mode}.png")))
    grid = Image.open(out / "rgb-x4-compare.png")
    zoom_height = round(256 * 6 / 8)
    assert grid.size == (ROW_LABEL_WIDTH + 3 * 256, LABEL_HEIGHT + 32 + zoom_height)  # the zooms make each column 256 wide
    left = ROW_LABEL_WIDTH + 2 * 256
    refined = np.asarray(grid.convert("RGB"))[LABEL_HEIGHT : LABEL_HEIGHT + 32, left : left + 48]
    assert np.array_equal(refined, np.asarray(Image.open(out / "rgb-x4-refined.png").convert("RGB")))
    assert json.loads(grid.text["diffier"])["compare"]["crop"] == [4, 2, 8, 6]


@pytest.mark.parametrize(("extra", "needle"), [(("--compare", "--baseline"), "drop --baseline"),
                                               (("--crop", "1,1,4,4"), "add --compare"),
                                               (("--compare", "--crop", "40,0,20,4"), "leaves the 48×32 output"),
                                               (("--compare", "--crop", "1,2"), "X,Y,W,H"),
                                               (("--compare", "--skip-existing", "--seed", "1"), "drop --skip-existing")])
def test_compare_refusals_exit_2(tiny, images, tmp_path, extra, needle):
    result = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tiny["vae"]),
                     "-o", f"{tmp_path}/", *extra)
    assert_one_line_error(result, 2, needle)
    assert not list(tmp_path.iterdir())


# --- sr --refiner iec ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_iec_runs_on_both_samplers_and_records_its_evaluations(tiny, images, tmp_path, sampler):
    result = sr(tiny, images / "rgb.png", tmp_path / "iec.png", "--seed", "2", "--sampler", sampler,
                "--refiner", "iec", "--iec-variant", "ddpm", "--iec-tol", "0")
    assert result.returncode == 0, result.stderr
    (record,) = result.records
    assert record["mode"] == "iec" and record["refiner"]["name"] == "iec" and record["refiner"]["variant"] == "ddpm"
    assert record["refinement"]["per_step"]["evaluations"] == [2, 2, 2]  # K = 2 at every one of the 3 steps
    assert record["refinement"]["summary"]["model_evaluations"] == 3 + 1 * 3
    assert "Refiner: IEC" in Image.open(tmp_path / "iec.png").text["postprocessing"]


def test_iec_keeps_the_ancestral_noise_of_a_step_fixed(tiny, images, tmp_path, monkeypatch):
    """With an ε that does not depend on x the fixed point is the plain step: IEC must reproduce the
    baseline's respaced-DDPM steps, noise included, from the same seed."""
    from models.stablesr.adapter import StableSR

    monkeypatch.setattr(StableSR, "predict", lambda self, x, t, state: torch.full_like(x, 0.3))
    base = sr(tiny, images / "rgb.png", tmp_path / "base.png", "--seed", "2", "--baseline")
    iec = sr(tiny, images / "rgb.png", tmp_path / "iec.png", "--seed", "2", "--refiner", "iec", "--iec-tol", "0")
    assert base.returncode == 0 and iec.returncode == 0, base.stderr + iec.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "base.png")), np.asarray(Image.open(tmp_path / "iec.png")))


def test_compare_takes_iec_and_names_its_panel_and_file_iec(tiny, images, tmp_path):
    out = tmp_path / "cmp"
    result = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tiny["vae"]), *SR_SMALL,
                     "--seed", "3", "--compare", "--refiner", "iec", "-o", f"{out}/", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["rgb-x4-baseline.png", "rgb-x4-compare.png", "rgb-x4-iec.png"]
    single = sr(tiny, images / "rgb.png", tmp_path / "iec.png", "--seed", "3", "--refiner", "iec")
    assert single.returncode == 0, single.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "iec.png")), np.asarray(Image.open(out / "rgb-x4-iec.png")))
    assert json.loads(Image.open(out / "rgb-x4-compare.png").text["diffier"])["compare"]["iec"] == str(out / "rgb-x4-iec.png")


# --- inputs as viewers show them, and inputs that are not still images ------------------------------


def test_exif_orientation_is_applied_and_recorded(tiny, tmp_path):
    """A JPEG stored 12×8 with Orientation 6 (every viewer shows it 8×12, turned 90°) is upscaled
    as shown: the output equals the upscale of the same pixels stored upright, and says so."""
    from PIL import ImageOps

    stored = Image.fromarray(np.random.default_rng(5).integers(0, 256, (8, 12, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    ImageOps.exif_transpose(Image.open(tmp_path / "turned.jpg")).save(tmp_path / "upright.png")
    runs = {name: sr(tiny, tmp_path / source, tmp_path / f"{name}-x4.png", "--seed", "4")
            for name, source in (("turned", "turned.jpg"), ("upright", "upright.png"))}
    for result in runs.values():
        assert result.returncode == 0, result.stderr
    turned, upright = (np.asarray(Image.open(tmp_path / f"{name}-x4.png")) for name in ("turned", "upright"))
    assert turned.shape == (48, 32, 3)  # shown 8 wide, 12 high, × 4
    assert np.array_equal(turned, upright)
    assert runs["turned"].records[0]["input_exif_orientation"] == 6 and runs["turned"].records[0]["input_size"] == [8, 12]
    assert runs["upright"].records[0]["input_exif_orientation"] == 1


def test_animated_images_and_decompression_bombs_are_refused_before_the_model(tmp_path, monkeypatch):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100)
    for name in ("anim.gif", "anim.webp"):
        result = run_cli("sr", str(tmp_path / name), "-o", f"{tmp_path / 'out'}/", "-q")
        assert_one_line_error(result, 2, "animated", "extract a frame")
    # Pillow warns past MAX_IMAGE_PIXELS and refuses past twice that: both are one-line errors
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for side, name in ((12, "warned.png"), (16, "refused.png")):  # 144 and 256 pixels
        Image.new("RGB", (side, side)).save(tmp_path / name)
        result = run_cli("sr", str(tmp_path / name), "-o", f"{tmp_path / 'out'}/", "-q")
        assert_one_line_error(result, 2, "decompression-bomb limit")
    assert not (tmp_path / "out").exists()


def test_pickled_callbacks_are_neutralised_named_and_recorded(tiny, images, tmp_path):
    """A Lightning save that pickles a callback class and `subprocess.call`: no code runs, stderr
    names what was replaced, and the record keeps it; `diffier convert` says the same. Saved at
    pickle protocol 4 instead, the weights-only reader refuses it: one line, exit 3, and torch's
    warning about the protocol is not passed on raw."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import subprocess

            return subprocess.call, (["touch", str(marker)],)

    vae = torch.load(tiny["vae"], weights_only=True)
    lightning = tmp_path / "vqgan_cfw_lightning.ckpt"
    contents = {**vae, "callbacks": {HarmlessCallback: {"monitor": "val/rec_loss"}}, "hook": Payload()}
    torch.save(contents, lightning)
    config = tiny["vae"].with_name(tiny["vae"].name + ".config.json").read_text()  # the tiny VAE's shapes
    for name in (lightning.name, "protocol4.ckpt"):
        (tmp_path / f"{name}.config.json").write_text(config)
    result = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(lightning), *SR_SMALL,
                     "--seed", "1", "-o", str(tmp_path / "out.png"), "--json")
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "pickles" in line]
    assert warning.startswith("warning: vqgan_cfw_lightning.ckpt pickles ") and "inert stand-in (no code ran)" in warning
    assert "HarmlessCallback" in warning and "call" in warning
    assert "diffier: warning" not in result.stderr
    names = result.records[0]["model"]["vae_checkpoint"]["neutralised_globals"]
    assert any(name.endswith("HarmlessCallback") for name in names) and result.records[0]["model"]["checkpoint"]["neutralised_globals"] == []
    converted = run_cli("convert", str(lightning), str(tmp_path / "vae.safetensors"))
    assert converted.returncode == 0, converted.stderr
    assert [line.split(" pickles ")[0] for line in converted.stderr.splitlines()] == ["warning: vqgan_cfw_lightning.ckpt", f"wrote {tmp_path / 'vae.safetensors'}"]
    assert not marker.exists()
    torch.save(contents, tmp_path / "protocol4.ckpt", pickle_protocol=4)
    refused = run_cli("sr", str(images / "rgb.png"), "--ckpt", str(tiny["ckpt"]), "--vae-ckpt", str(tmp_path / "protocol4.ckpt"),
                      *SR_SMALL, "--seed", "1", "-o", str(tmp_path / "refused.png"), "-q")
    assert_one_line_error(refused, 3, "protocol4.ckpt is not a tensors-only torch checkpoint", "saved at pickle protocol 4 or 5")
    assert not marker.exists() and not (tmp_path / "refused.png").exists()
