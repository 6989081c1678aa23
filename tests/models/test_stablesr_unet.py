"""StableSR's SPADE UNet and time-aware struct encoder against formulas and the official key layout.

No official weights are available here, so the checkpoint side is synthesised: the LDM key names
and shapes of `UNetModelDualcondV2` / `EncoderUNetModelWT` are enumerated by following the
official constructors (ldm/modules/diffusionmodules/openaimodel.py l.958-1296 and l.1341-1514,
IceClear/StableSR 398ee93) and pushed through the port's conversion and strict loading. The
SD-2.1-sized models are built on the meta device, which checks every key and shape at no cost.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D

from models.stablesr.struct_encoder import (
    GroupNorm32,
    ResBlock,
    TimeAwareEncoder,
    legacy_qkv_attention,
    timestep_embedding,
)
from models.stablesr.unet import (
    SD21_UNET_CONFIG,
    SPADE,
    SpadeResnetBlock2D,
    StructFeatures,
    build_stablesr_unet,
    convert_official_unet,
)
from tests.tiny_stablesr import (
    PREFIX,
    TINY_ENCODER,
    TINY_STRUCT_CHANNELS,
    TINY_UNET,
    TINY_UNET_LDM,
    official_unet_shapes,
    randomize,
)
from tests.tolerance import assert_within

# ---------------------------------------------------------------------------------------------------
# Official key layouts, enumerated from the official constructors (official_unet_shapes: tests/tiny_stablesr.py)

SD21_UNET_LDM = (320, (1, 2, 4, 4), 2, {1, 2, 4}, 1024)
# The 22 SPADE layers of SD-2.1 (docs/stablesr.md §2.3): LDM block → diffusers resnet, channels.
SD21_SPADE_TABLE = [
    *[
        (f"input_blocks.{b}.0", f"down_blocks.{b // 3}.resnets.{(b - 1) % 3}", (320, 640, 1280, 1280)[b // 3])
        for b in (1, 2, 4, 5, 7, 8, 10, 11)
    ],
    ("middle_block.0", "mid_block.resnets.0", 1280),
    ("middle_block.2", "mid_block.resnets.1", 1280),
    *[
        (f"output_blocks.{b}.0", f"up_blocks.{b // 3}.resnets.{b % 3}", (1280, 1280, 640, 320)[b // 3])
        for b in range(12)
    ],
]
# Tiny encoder (TINY_ENCODER), per the layout of docs/stablesr.md §2.4 scaled down: ResBlock+Attn, Down, ResBlock+Attn, Down,
# ResBlock 64→128 (skip conv, no attention at the last level); middle ResBlock/Attn/ResBlock;
# fea_tran 64, 64, 128 → 32 (all three with a skip conv).
_RES = [
    f"{layer}.{param}"
    for layer in ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
    for param in ("weight", "bias")
]
_SKIP = ["skip_connection.weight", "skip_connection.bias"]
_ATTN = ["norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj_out.weight", "proj_out.bias"]
TINY_ENCODER_KEYS = {
    "time_embed.0.weight", "time_embed.0.bias", "time_embed.2.weight", "time_embed.2.bias",
    "input_blocks.0.0.weight", "input_blocks.0.0.bias",
    *[f"input_blocks.1.0.{k}" for k in _RES], *[f"input_blocks.1.1.{k}" for k in _ATTN],
    "input_blocks.2.0.op.weight", "input_blocks.2.0.op.bias",
    *[f"input_blocks.3.0.{k}" for k in _RES], *[f"input_blocks.3.1.{k}" for k in _ATTN],
    "input_blocks.4.0.op.weight", "input_blocks.4.0.op.bias",
    *[f"input_blocks.5.0.{k}" for k in _RES + _SKIP],
    *[f"middle_block.0.{k}" for k in _RES],
    *[f"middle_block.1.{k}" for k in _ATTN],
    *[f"middle_block.2.{k}" for k in _RES],
    *[f"fea_tran.{i}.{k}" for i in range(3) for k in _RES + _SKIP],
}


# ---------------------------------------------------------------------------------------------------
# Formulas


@pytest.mark.numerics
def test_spade_matches_its_formula():
    spade = SPADE(64, label_channels=TINY_STRUCT_CHANNELS)
    randomize(spade, seed=1)
    h, feature = torch.randn(2, 64, 8, 8), torch.randn(2, TINY_STRUCT_CHANNELS, 8, 8)
    actv = F.relu(F.conv2d(feature, spade.mlp_shared[0].weight, spade.mlp_shared[0].bias, padding=1))
    gamma = F.conv2d(actv, spade.mlp_gamma.weight, spade.mlp_gamma.bias, padding=1)
    beta = F.conv2d(actv, spade.mlp_beta.weight, spade.mlp_beta.bias, padding=1)
    normalized = F.group_norm(h, 32, spade.param_free_norm.weight, spade.param_free_norm.bias, eps=1e-5)
    with torch.no_grad():
        assert torch.equal(spade(h, feature), normalized * (1 + gamma) + beta)  # the port runs these same operations


def test_group_norm32_runs_in_fp32():
    norm = GroupNorm32(64)
    x = torch.randn(2, 64, 4, 4, dtype=torch.bfloat16) * 30 + 100
    expected = F.group_norm(x.float(), 32, norm.weight, norm.bias, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(norm(x), expected)


def _official_legacy_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """QKVAttentionLegacy's einsum path (openaimodel.py l.540-570), written out."""
    batch, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(batch * heads, 3 * ch, length).split(ch, dim=1)
    scale = ch**-0.25
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(batch, -1, length)


def _qkv_first_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """QKVAttention (l.578): q/k/v split first, then heads; the order StableSR does *not* use."""
    batch, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = (t.reshape(batch * heads, ch, length) for t in qkv.chunk(3, dim=1))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / ch**0.5, dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(batch, -1, length)


@pytest.mark.numerics
def test_attention_uses_the_legacy_head_split():
    qkv = torch.randn(2, 3 * 4 * 8, 20, generator=torch.Generator().manual_seed(2))
    port = legacy_qkv_attention(qkv, num_heads=4)
    # scaled_dot_product_attention against the einsum path (scale split over q and k): float32, 2.4e-7 apart
    # at worst on |out| ≲ 2.6; 1e-5 is 40× that, the other head split is > 0.1 away (next line).
    assert_within(port, _official_legacy_attention(qkv, 4), atol=1e-5, what="attention")
    assert (port - _qkv_first_attention(qkv, 4)).abs().max() > 0.1  # the split order matters, so the check has teeth


@pytest.mark.numerics
def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0, 1, 417, 999])
    expected = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.equal(timestep_embedding(t, 256), expected)  # diffusers computes the same operations in the same order
    assert torch.equal(timestep_embedding(t, 256)[0, :128], torch.ones(128))  # cos(0) first


@pytest.mark.numerics
def test_encoder_resblock_matches_its_formula():
    block = ResBlock(32, 128, 64)
    randomize(block, seed=3)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    gn = lambda t, norm: F.group_norm(t, 32, norm.weight, norm.bias, eps=1e-5)  # noqa: E731
    h = F.conv2d(F.silu(gn(x, block.in_layers[0])), block.in_layers[2].weight, block.in_layers[2].bias, padding=1)
    h = h + F.linear(F.silu(emb), block.emb_layers[1].weight, block.emb_layers[1].bias)[:, :, None, None]
    h = F.conv2d(F.silu(gn(h, block.out_layers[0])), block.out_layers[3].weight, block.out_layers[3].bias, padding=1)
    expected = F.conv2d(x, block.skip_connection.weight, block.skip_connection.bias) + h
    with torch.no_grad():
        assert torch.equal(block(x, emb), expected)  # the block's modules run exactly these operations


# ---------------------------------------------------------------------------------------------------
# SPADE resnet


@pytest.fixture
def resnet_pair() -> tuple[ResnetBlock2D, SpadeResnetBlock2D, StructFeatures]:
    stock = ResnetBlock2D(in_channels=32, out_channels=64, temb_channels=128, eps=1e-5)
    randomize(stock, seed=4)
    struct = StructFeatures()
    spade_block = SpadeResnetBlock2D.replacing(stock, struct, TINY_STRUCT_CHANNELS)
    randomize(spade_block.spade, seed=5)
    return stock.eval(), spade_block.eval(), struct


@pytest.mark.numerics
def test_spade_resnet_without_spade_is_the_stock_resnet(resnet_pair, monkeypatch):
    stock, spade_block, _ = resnet_pair
    monkeypatch.setattr(spade_block.spade, "forward", lambda h, feature: h)
    monkeypatch.setattr(spade_block.struct, "for_width", lambda h: None)
    x, temb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    with torch.no_grad():
        assert torch.equal(spade_block(x, temb), stock(x, temb))  # diffusers' operations, the skip added first (a + b = b + a)


@pytest.mark.numerics
def test_spade_resnet_modulates_the_branch_before_the_skip_add(resnet_pair):
    """ResBlockDual: out = skip(x) + SPADE(out_layers(in_layers(x) + emb)) (openaimodel.py l.440-461)."""
    stock, spade_block, struct = resnet_pair
    x, temb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    feature = torch.randn(2, TINY_STRUCT_CHANNELS, 8, 8)
    with torch.no_grad():
        branch = stock(x, temb) - stock.conv_shortcut(x)
        with struct.provided({"8": feature, "4": torch.randn(2, TINY_STRUCT_CHANNELS, 4, 4)}):
            out = spade_block(x, temb)
        # `branch` is recovered as stock − shortcut, which rounds at the scale of the stock output, and SPADE
        # scales that by 1 + γ: 1.3e-7 of max|out| ≈ 60 at worst. 5e-6 of it is 40× that; SPADE applied
        # after the skip add moves outputs by ~40, γ and β swapped by ~100.
        expected = stock.conv_shortcut(x) + spade_block.spade(branch, feature)
        assert_within(out, expected, atol=5e-6 * expected.abs().max(), what="skip + spade")

        # γ = β = 0 still normalises the branch (affine GroupNorm): SPADE never reduces to the stock block.
        for conv in (spade_block.spade.mlp_gamma, spade_block.spade.mlp_beta):
            conv.weight.zero_()
            conv.bias.zero_()
        with struct.provided({"8": feature}):
            out = spade_block(x, temb)
        norm = spade_block.spade.param_free_norm
        expected = stock.conv_shortcut(x) + F.group_norm(branch, 32, norm.weight, norm.bias, eps=1e-5)
        assert_within(out, expected, atol=5e-6 * expected.abs().max(), what="skip + norm")  # as above; 5e-8 relative seen
        assert (out - stock(x, temb)).abs().max() > 0.1


def test_struct_features_are_picked_by_width(resnet_pair):
    _, spade_block, struct = resnet_pair
    x, temb = torch.randn(1, 32, 8, 8), torch.randn(1, 128)
    with pytest.raises(RuntimeError, match="without struct features"):
        spade_block(x, temb)
    with struct.provided({"16": torch.randn(1, TINY_STRUCT_CHANNELS, 16, 16)}):
        with pytest.raises(KeyError, match=r"no struct feature of width 8 \(the struct encoder gave widths \['16'\]\)"):
            spade_block(x, temb)
    with pytest.raises(RuntimeError, match="without struct features"):  # cleared on leaving the block, error or not
        spade_block(x, temb)


# ---------------------------------------------------------------------------------------------------
# Checkpoint conversion


def test_sd21_official_keys_convert_to_the_spade_unet():
    """Every key and shape of the official SD-2.1-sized UNetModelDualcondV2 lands on the port's (on the meta device)."""
    official = {PREFIX + k: torch.empty(s, device="meta") for k, s in official_unet_shapes(*SD21_UNET_LDM, 256).items()}
    with torch.device("meta"):
        unet, _ = build_stablesr_unet(SD21_UNET_CONFIG)
    others = {"structcond_stage_model.time_embed.0.weight": torch.empty(1), "betas": torch.empty(1)}
    converted = convert_official_unet({**official, **others})
    shapes = lambda state: {k: tuple(v.shape) for k, v in state.items()}  # noqa: E731
    assert shapes(converted) == shapes(unet.state_dict())
    assert sum(isinstance(m, SpadeResnetBlock2D) for m in unet.modules()) == 22
    assert len([k for k in converted if ".spade." in k]) == 22 * 8
    for ldm, diffusers, channels in SD21_SPADE_TABLE:
        for param in ("param_free_norm.weight", "mlp_shared.0.weight", "mlp_gamma.weight", "mlp_beta.bias"):
            assert converted[f"{diffusers}.spade.{param}"] is official[f"{PREFIX}{ldm}.spade.{param}"]
        assert converted[f"{diffusers}.spade.mlp_gamma.weight"].shape == (channels, 128, 3, 3)


def test_convert_refuses_a_state_dict_without_the_unet_prefix():
    with pytest.raises(ValueError, match="model.diffusion_model"):
        convert_official_unet({"input_blocks.0.0.weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def tiny_models():
    """Tiny SPADE UNet + encoder loaded strictly from a synthetic official checkpoint, and that checkpoint."""
    gen = torch.Generator().manual_seed(6)
    unet_shapes = official_unet_shapes(*TINY_UNET_LDM, TINY_STRUCT_CHANNELS)
    checkpoint = {PREFIX + k: torch.randn(s, generator=gen) * 0.2 for k, s in unet_shapes.items()}
    reference_encoder = TimeAwareEncoder(**TINY_ENCODER)
    randomize(reference_encoder, seed=7)
    checkpoint.update({f"structcond_stage_model.{k}": v for k, v in reference_encoder.state_dict().items()})

    unet, struct = build_stablesr_unet(TINY_UNET, struct_channels=TINY_STRUCT_CHANNELS)
    unet.load_state_dict(convert_official_unet(checkpoint, TINY_UNET), strict=True)
    encoder = TimeAwareEncoder(**TINY_ENCODER)
    prefix = "structcond_stage_model."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}, strict=True)
    return unet.eval(), struct, encoder.eval(), checkpoint


def test_tiny_official_checkpoint_loads_at_the_expected_names(tiny_models):
    unet, _, _, checkpoint = tiny_models
    state = unet.state_dict()
    expected = {
        "down_blocks.0.resnets.1.spade.mlp_gamma.weight": "input_blocks.2.0.spade.mlp_gamma.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
        "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
        "mid_block.resnets.1.spade.param_free_norm.bias": "middle_block.2.spade.param_free_norm.bias",
        "up_blocks.0.resnets.2.spade.mlp_shared.0.weight": "output_blocks.2.0.spade.mlp_shared.0.weight",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
        "up_blocks.1.resnets.0.spade.mlp_beta.bias": "output_blocks.3.0.spade.mlp_beta.bias",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight": (
            "output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"
        ),
        "up_blocks.1.resnets.2.time_emb_proj.weight": "output_blocks.5.0.emb_layers.1.weight",
    }
    for diffusers, ldm in expected.items():
        assert torch.equal(state[diffusers], checkpoint[PREFIX + ldm]), diffusers


def test_tiny_unet_feeds_each_spade_the_feature_of_its_width(tiny_models):
    """All SPADE layers run, each on the encoder feature whose width is h's: the output resnet before an
    upsampler (up_blocks.0.resnets.2) still runs at the lower width."""
    unet, struct, encoder, _ = tiny_models
    z, x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    t = torch.tensor([999, 3])
    used: dict[str, tuple[int, torch.Tensor]] = {}  # resnet name → (h width, feature SPADE got)

    def record(name):
        return lambda module, args, output: used.__setitem__(name, (args[0].shape[-1], args[1]))

    hooks = [
        module.spade.register_forward_hook(record(name))
        for name, module in unet.named_modules()
        if isinstance(module, SpadeResnetBlock2D)
    ]
    with torch.no_grad():
        features = encoder(z, t)
        with struct.provided(features):
            out = unet(x, t, encoder_hidden_states=context).sample
        for hook in hooks:
            hook.remove()
        with struct.provided({width: torch.randn_like(f) for width, f in features.items()}):
            out_other = unet(x, t, encoder_hidden_states=context).sample

    expected_widths = {
        **{f"down_blocks.0.resnets.{i}": 16 for i in range(2)},
        **{f"down_blocks.1.resnets.{i}": 8 for i in range(2)},
        **{f"mid_block.resnets.{i}": 8 for i in range(2)},
        **{f"up_blocks.0.resnets.{i}": 8 for i in range(3)},
        **{f"up_blocks.1.resnets.{i}": 16 for i in range(3)},
    }
    assert {name: width for name, (width, _) in used.items()} == expected_widths
    for width, feature in used.values():
        assert feature is features[str(width)]
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out - out_other).abs().max() > 1e-3  # the struct features reach the output


# ---------------------------------------------------------------------------------------------------
# Struct encoder


def test_tiny_encoder_has_the_official_key_names(tiny_models):
    _, _, encoder, _ = tiny_models
    assert set(encoder.state_dict()) == TINY_ENCODER_KEYS


def test_tiny_encoder_outputs_one_feature_per_width(tiny_models):
    _, _, encoder, _ = tiny_models
    z = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        features = encoder(z, torch.tensor([999, 999]))
        later = encoder(z, torch.tensor([10, 10]))
    assert list(features) == ["16", "8", "4"]  # levels before each Downsample, then the middle block
    for width, feature in features.items():
        assert feature.shape == (2, TINY_STRUCT_CHANNELS, int(width), int(width))
    assert all((features[w] - later[w]).abs().max() > 1e-3 for w in features)  # time-aware


def test_official_encoder_layout():
    """The official config (docs/stablesr.md §2.4): 12 input blocks, attention at ds 1/2/4, fea_tran 256/256/512/512 → 256."""
    with torch.device("meta"):
        encoder = TimeAwareEncoder()
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes["time_embed.0.weight"] == (1024, 256) and shapes["time_embed.2.weight"] == (1024, 1024)
    assert shapes["input_blocks.0.0.weight"] == (256, 4, 3, 3)
    assert [b for b in range(12) if f"input_blocks.{b}.0.op.weight" in shapes] == [3, 6, 9]
    assert [b for b in range(12) if f"input_blocks.{b}.1.qkv.weight" in shapes] == [1, 2, 4, 5, 7, 8]
    assert shapes["input_blocks.7.0.skip_connection.weight"] == (512, 256, 1, 1)
    assert shapes["input_blocks.8.1.qkv.weight"] == (1536, 512, 1)
    assert shapes["middle_block.1.proj_out.weight"] == (512, 512, 1)
    fea_tran_convs = [shapes[f"fea_tran.{i}.in_layers.2.weight"] for i in range(4)]
    assert fea_tran_convs == [(256, 256, 3, 3)] * 2 + [(256, 512, 3, 3)] * 2
    assert "fea_tran.1.skip_connection.weight" not in shapes
    assert shapes["fea_tran.3.skip_connection.weight"] == (256, 512, 1, 1)
    assert encoder.middle_block[1].num_heads == 4
