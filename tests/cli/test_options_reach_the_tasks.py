"""Every field of every command's options object comes from one of its parameters, from a value the
command computes (refiner, json, loras, ...), or is left at its default on purpose: `options.fill`
takes fields by name, so a renamed parameter would otherwise fall back to a default in silence."""

from __future__ import annotations

import dataclasses

import pytest
import typer

# command → (its options class, the fields the command passes itself, the fields it leaves at their default)
COMMANDS = {
    ("t2i",): ("diffier_cli.t2i:T2IOptions", {"refiner", "json", "loras"}, set()),
    ("sr",): ("diffier_cli.sr:SROptions", {"refiner", "json", "checkpoint", "vae_checkpoint"}, set()),
    ("tts",): ("diffier_cli.tts:TTSOptions", {"refiner", "json"}, set()),
    ("eval", "t2i"): ("diffier_cli.eval_t2i:EvalT2IOptions", {"refiner", "json", "loras", "cfg"},
                      {"batch_invariant", "cpu_offload", "vae_slicing", "vae_tiling", "attention_slicing", "compile"}),
    ("eval", "sr"): ("diffier_cli.eval_sr:EvalSROptions", {"refiner", "json", "checkpoint", "vae_checkpoint", "scale"}, set()),
    ("eval", "tts"): ("diffier_cli.eval_tts:EvalTTSOptions", {"refiner", "json"}, {"output"}),  # it writes only --csv
}


def parameters(path: tuple[str, ...]) -> set[str]:
    from diffier_cli.app import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {param.name for param in command.params}


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_options_field_has_a_source(path):
    import importlib

    target, computed, defaulted = COMMANDS[path]
    module, name = target.split(":")
    fields = {field.name for field in dataclasses.fields(getattr(importlib.import_module(module), name))}
    unsourced = fields - parameters(path) - computed - defaulted
    assert not unsourced, f"{' '.join(path)}: {sorted(unsourced)} would silently take their defaults"
    assert not (defaulted & parameters(path)), "a field left at its default is a parameter after all"
