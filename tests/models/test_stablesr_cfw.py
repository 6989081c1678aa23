"""StableSR's CFW autoencoder and the safe reading of the official Lightning checkpoints.

Tiny VAE configs stand in for SD's kl-f8 (no weights can be downloaded here). The checkpoint
tests write files in the official layout (IceClear/StableSR 398ee93: un-prefixed LDM VAE keys
plus decoder.fusion_layer_* and loss.*, inside a Lightning-like dict) and load them through the
real loaders.
"""

from __future__ import annotations

import os
import pickle
import subprocess

import pytest
import torch
import torch.nn.functional as F

from models.errors import ModelUnavailable
from models.stablesr.cfw import CFWAutoencoder, FuseSftBlockRRDB, load_cfw
from models.lightning import convert_to_safetensors, read_official_checkpoint
from models.stablesr.checkpoints import split_by_prefix
from tests.tiny_stablesr import TINY_VAE, TINY_WIDTHS, HarmlessCallback, official_cfw_state_dict


@pytest.fixture(scope="module")
def cfw() -> CFWAutoencoder:
    torch.manual_seed(0)
    return CFWAutoencoder(TINY_VAE).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


# --- the encode/decode loops ---------------------------------------------------------------


@torch.no_grad()
def test_encode_is_the_stock_encoder_plus_level_1_and_2_features(cfw, image):
    captured = []
    taps = [cfw.vae.encoder.down_blocks[level].resnets[-1] for level in (1, 2)]
    hooks = [tap.register_forward_hook(lambda _m, _i, out: captured.append(out)) for tap in taps]
    try:
        posterior = cfw.vae.encode(image).latent_dist
    finally:
        for hook in hooks:
            hook.remove()

    latent, enc_fea = cfw.encode(image, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(latent, posterior.mean + posterior.std * noise)
    # Encoder.forward keeps the last ResnetBlock output of levels 1 and 2, before the downsample.
    assert [tuple(f.shape) for f in enc_fea] == [(2, 32, 16, 16), (2, 64, 8, 8)]
    assert all(torch.equal(mine, stock) for mine, stock in zip(enc_fea, captured, strict=True))


@torch.no_grad()
def test_dec_w_zero_is_exactly_the_stock_decoder(cfw, image):
    latent, enc_fea = cfw.encode(image, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cfw.decode(latent, enc_fea, 0.0), cfw.vae.decode(latent).sample)


def _reference_fuse(layer: FuseSftBlockRRDB, enc: torch.Tensor, dec: torch.Tensor, w: float) -> torch.Tensor:
    """Fuse_sft_block_RRDB written out from the official code with functional ops on the layer's
    parameters (model.py l.797-835, rrdbnet_arch.py l.9-64)."""
    p = dict(layer.named_parameters())

    def conv(x, name):
        weight = p[f"{name}.weight"]
        return F.conv2d(x, weight, p[f"{name}.bias"], padding=weight.shape[-1] // 2)

    def res_block(x, name):
        h = conv(F.silu(F.group_norm(x, 32, p[f"{name}.norm1.weight"], p[f"{name}.norm1.bias"], 1e-6)), f"{name}.conv1")
        h = conv(F.silu(F.group_norm(h, 32, p[f"{name}.norm2.weight"], p[f"{name}.norm2.bias"], 1e-6)), f"{name}.conv2")
        return h + (conv(x, f"{name}.conv_out") if f"{name}.conv_out.weight" in p else x)

    def dense_block(x, name):
        x1 = F.leaky_relu(conv(x, f"{name}.conv1"), 0.2)
        x2 = F.leaky_relu(conv(torch.cat((x, x1), 1), f"{name}.conv2"), 0.2)
        x3 = F.leaky_relu(conv(torch.cat((x, x1, x2), 1), f"{name}.conv3"), 0.2)
        x4 = F.leaky_relu(conv(torch.cat((x, x1, x2, x3), 1), f"{name}.conv4"), 0.2)
        return conv(torch.cat((x, x1, x2, x3, x4), 1), f"{name}.conv5") * 0.2 + x

    h = res_block(torch.cat([enc, dec], dim=1), "encode_enc_1")
    for i in range(len(layer.encode_enc_2)):
        rrdb_in = h
        for j in (1, 2, 3):
            h = dense_block(h, f"encode_enc_2.{i}.rdb{j}")
        h = h * 0.2 + rrdb_in
    return dec + w * res_block(h, "encode_enc_3")


@pytest.mark.numerics
@torch.no_grad()
def test_dec_w_positive_adds_the_fusion_before_each_upsample(cfw, image):
    latent, enc_fea = cfw.encode(image, generator=torch.Generator().manual_seed(0))
    w = 0.5
    decoder = cfw.vae.decoder
    h = decoder.mid_block(decoder.conv_in(cfw.vae.post_quant_conv(latent)), None)
    h = decoder.up_blocks[0](h)
    for up_block, layer, enc in ((decoder.up_blocks[1], cfw.fusion_layer_2, enc_fea[1]),
                                 (decoder.up_blocks[2], cfw.fusion_layer_1, enc_fea[0])):
        for resnet in up_block.resnets:
            h = resnet(h, None)
        h = _reference_fuse(layer, enc, h, w)
        h = up_block.upsamplers[0](h)
    h = decoder.up_blocks[3](h)
    expected = decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(h)))

    decoded = cfw.decode(latent, enc_fea, w)
    assert not torch.allclose(decoded, cfw.decode(latent, enc_fea, 0.0))
    # The same modules, and the fusion layer written out with the same operations in the same order: equal.
    assert torch.equal(decoded, expected)


# --- key names -------------------------------------------------------------------------------


def _official_fuse_keys(num_block: int) -> set[str]:
    """Fuse_sft_block_RRDB's parameter names: ResBlock(2C→C) with conv_out, basicsr make_layer
    (an nn.Sequential) of RRDBs with rdb1..3.conv1..5, ResBlock(C→C) without conv_out."""
    res_block = ["norm1", "conv1", "norm2", "conv2"]
    modules = [f"encode_enc_1.{m}" for m in [*res_block, "conv_out"]]
    modules += [f"encode_enc_2.{i}.rdb{j}.conv{k}" for i in range(num_block) for j in (1, 2, 3) for k in range(1, 6)]
    modules += [f"encode_enc_3.{m}" for m in res_block]
    return {f"{m}.{p}" for m in modules for p in ("weight", "bias")}


def test_fuse_block_has_the_official_key_names_and_shapes():
    state = FuseSftBlockRRDB(256, num_block=2).state_dict()
    assert set(state) == _official_fuse_keys(2)
    assert state["encode_enc_1.conv1.weight"].shape == (256, 512, 3, 3)
    assert state["encode_enc_1.conv_out.weight"].shape == (256, 512, 1, 1)
    assert state["encode_enc_2.1.rdb3.conv1.weight"].shape == (32, 256, 3, 3)
    assert state["encode_enc_2.0.rdb2.conv5.weight"].shape == (256, 256 + 4 * 32, 3, 3)
    assert state["encode_enc_3.conv2.weight"].shape == (256, 256, 3, 3)


def test_cfw_fusion_widths_follow_the_config():
    model = CFWAutoencoder(TINY_VAE)
    assert model.fusion_layer_1.encode_enc_3.conv1.out_channels == TINY_WIDTHS[1]
    assert model.fusion_layer_2.encode_enc_3.conv1.out_channels == TINY_WIDTHS[2]


# --- the official checkpoint layout (its keys and shapes: tests/tiny_stablesr.py) ------------


def _lightning_save(state_dict: dict[str, torch.Tensor], path, **extras) -> None:
    torch.save({
        "epoch": 11,
        "global_step": 1200,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state_dict,
        "callbacks": {HarmlessCallback: {"monitor": "val/rec_loss"}},
        "hyper_parameters": HarmlessCallback("val/rec_loss"),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 5e-5}]}],
        **extras,
    }, path)


def test_official_cfw_checkpoint_loads_strictly_through_inert_stand_ins(tmp_path):
    official = official_cfw_state_dict()
    path = tmp_path / "vqgan_cfw_00011.ckpt"
    _lightning_save(official, path)
    with pytest.raises(pickle.UnpicklingError):  # the stand-in path is really exercised
        torch.load(path, weights_only=True)

    state_dict = read_official_checkpoint(path).tensors
    assert set(state_dict) == set(official)
    model = load_cfw(state_dict, TINY_VAE)

    vae = model.vae
    assert torch.equal(vae.encoder.down_blocks[2].resnets[0].conv_shortcut.weight,
                       official["encoder.down.2.block.0.nin_shortcut.weight"])
    assert torch.equal(vae.decoder.up_blocks[0].resnets[1].conv1.weight, official["decoder.up.3.block.1.conv1.weight"])
    assert torch.equal(vae.decoder.up_blocks[2].upsamplers[0].conv.weight, official["decoder.up.1.upsample.conv.weight"])
    assert torch.equal(vae.decoder.mid_block.attentions[0].to_q.weight, official["decoder.mid.attn_1.q.weight"][:, :, 0, 0])
    assert torch.equal(vae.quant_conv.weight, official["quant_conv.weight"])
    assert torch.equal(model.fusion_layer_2.encode_enc_2[1].rdb3.conv5.bias,
                       official["decoder.fusion_layer_2.encode_enc_2.1.rdb3.conv5.bias"])
    assert torch.equal(model.fusion_layer_1.encode_enc_1.conv_out.weight,
                       official["decoder.fusion_layer_1.encode_enc_1.conv_out.weight"])


def test_cfw_loading_refuses_missing_or_stray_tensors():
    official = official_cfw_state_dict()
    with pytest.raises(ModelUnavailable, match="missing"):
        load_cfw({k: v for k, v in official.items() if k != "decoder.fusion_layer_1.encode_enc_3.conv2.bias"}, TINY_VAE)
    with pytest.raises(ModelUnavailable, match="no diffusers counterpart"):
        load_cfw({**official, "decoder.mid.extra.weight": torch.zeros(1)}, TINY_VAE)
    with pytest.raises(ModelUnavailable, match="unexpected tensors"):
        load_cfw({**official, "model_ema.decay": torch.zeros(())}, TINY_VAE)


class _RunsShellCommand:
    """A payload that would create `marker` if the pickle were unpickled for real."""

    def __init__(self, marker, via_os: bool):
        self.marker, self.via_os = str(marker), via_os

    def __reduce__(self):
        if self.via_os:
            return os.system, (f"touch {self.marker}",)
        return subprocess.call, (["touch", self.marker],)


@pytest.mark.parametrize("via_os", [True, False], ids=["os.system-refused", "subprocess.call-neutralised"])
def test_executable_pickle_payload_never_runs(tmp_path, via_os):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    _lightning_save(official_cfw_state_dict(), path, payload=_RunsShellCommand(marker, via_os))
    if via_os:
        with pytest.raises(ModelUnavailable, match="blocked"):
            read_official_checkpoint(path).tensors
    else:
        loaded = read_official_checkpoint(path)
        assert "decoder.fusion_layer_1.encode_enc_1.conv1.weight" in loaded.tensors
        # Named as the pickle names them (torch.save's protocol 2 writes subprocess.call under its
        # Python 2 name), so the user is told what was replaced.
        assert loaded.neutralised == ("commands.call", f"{HarmlessCallback.__module__}.HarmlessCallback")
    assert not marker.exists()


def test_safetensors_conversion_round_trips_exactly(tmp_path):
    official = {**official_cfw_state_dict(), "half.weight": torch.randn(3, 2).half()}
    source = tmp_path / "vqgan_cfw_00011.ckpt"
    _lightning_save(official, source)
    target = tmp_path / "vqgan_cfw_00011.safetensors"
    convert_to_safetensors(source, target)

    converted = read_official_checkpoint(target).tensors
    assert set(converted) == set(official)
    for key, value in official.items():
        assert converted[key].dtype == value.dtype and torch.equal(converted[key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name, target.name]  # no temp file left


# --- files that are not StableSR checkpoints -------------------------------------------------


def test_non_stablesr_files_name_what_was_found(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 1}, other)
    with pytest.raises(ModelUnavailable, match=r"found a dict with 2 key\(s\): 'model', 'epoch'"):
        read_official_checkpoint(other).tensors

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelUnavailable, match="not a tensors-only torch checkpoint"):
        read_official_checkpoint(text).tensors

    with pytest.raises(ModelUnavailable, match="no checkpoint at"):
        read_official_checkpoint(tmp_path / "missing.ckpt").tensors

    unet_only = {"conv_in.weight": torch.zeros(1), "conv_in.bias": torch.zeros(1)}
    with pytest.raises(ModelUnavailable, match=r"CFW checkpoint .*found a dict with 2 key\(s\): 'conv_in.weight'"):
        load_cfw(unet_only, TINY_VAE)
    with pytest.raises(ModelUnavailable, match=r"diffusion checkpoint .*found a dict with 2 key\(s\): 'conv_in.weight'"):
        split_by_prefix(unet_only)


def test_split_by_prefix_groups_the_sub_models_and_drops_schedule_buffers():
    tensor = torch.zeros(1)
    state = {
        "model.diffusion_model.input_blocks.1.0.spade.mlp_gamma.weight": tensor,
        "structcond_stage_model.time_embed.0.weight": tensor,
        "first_stage_model.encoder.conv_in.weight": tensor,
        "cond_stage_model.model.ln_final.weight": tensor,
        "betas": tensor,
        "posterior_mean_coef2": tensor,
    }
    groups = split_by_prefix(state)
    assert {name: list(group) for name, group in groups.items()} == {
        "unet": ["model.diffusion_model.input_blocks.1.0.spade.mlp_gamma.weight"],
        "struct_encoder": ["structcond_stage_model.time_embed.0.weight"],
        "vae": ["first_stage_model.encoder.conv_in.weight"],
        "text_encoder": ["cond_stage_model.model.ln_final.weight"],
    }
    with pytest.raises(ModelUnavailable, match="model_ema.decay"):
        split_by_prefix({**state, "model_ema.decay": tensor})
