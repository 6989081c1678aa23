"""Batch jobs without a command or a model: shard arithmetic and launcher environments, output
names from the global index, the job plan of a resumed run, line splitting, and the
batch-invariant kernels (diffier_cli/jobs.py, outputs.py, invariant.py). The commands' sharding,
resuming and --keep-going: tests/cli/test_batch_jobs.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from diffier_cli.errors import UsageError
from diffier_cli.invariant import batch_invariant
from diffier_cli.jobs import Item, Shard, parse_shard, plan_job, resolve_shard, split_lines
from diffier_cli.outputs import plan_outputs
from tests.tolerance import assert_within


@pytest.mark.parametrize("total", [0, 1, 5, 16, 17])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_are_contiguous_disjoint_and_cover_every_item_once(total, count):
    parts = [Shard(k, count, "--shard").select(total) for k in range(count)]
    assert [i for part in parts for i in part] == list(range(total))  # in order, no padding, no duplicates
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize(
    ("environ", "explicit", "expected"),
    [
        ({}, None, (0, 1, None)),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, None, (1, 2, 1)),  # torchrun / accelerate
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}, None, (3, 4, 0)),  # srun
        # an array task also sees SLURM_PROCID 0 of 1; the array decides, offset by its first id
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
          "SLURM_ARRAY_TASK_MIN": "3"}, None, (2, 4, None)),
        ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"}, None, (3, 4, None)),
        # srun tasks inside an array task split that task's share
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
          "SLURM_LOCALID": "1"}, None, (3, 6, 1)),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "0/3", (0, 3, 1)),  # the flag wins, the GPU slot stays
        ({}, "2/3", (2, 3, None)),
    ],
)
def test_shard_comes_from_the_flag_then_the_launcher(environ, explicit, expected):
    shard = resolve_shard(explicit, environ)
    assert (shard.index, shard.count, shard.local_rank) == expected


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_bad_shards_are_usage_errors(text):
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text)


def test_names_come_from_the_global_index_and_the_input(tmp_path):
    items = [Item(index=i, seed=7 + i, slug="s", stem="st", mode="refined") for i in range(3)]
    items[1].name = "chosen"
    items[2].subdir = "deep/er"
    paths = plan_outputs(f"{tmp_path}/", items, "{index:05d}-{seed}.png", name="{index:03d}-{mode}")
    assert paths == [tmp_path / "000-refined.png", tmp_path / "chosen.png", tmp_path / "deep/er" / "002-refined.png"]
    # an explicit -o FILE is taken as given, whatever the item's own name or sub-folder
    assert plan_outputs(str(tmp_path / "x.png"), [replace(items[1], subdir="s")], "{index}.png") == [tmp_path / "x.png"]
    with pytest.raises(UsageError, match="-o to be a folder"):
        plan_outputs(str(tmp_path / "one.png"), items[:1], "{index}.png", name="{index}")
    with pytest.raises(UsageError, match="items 0 and 1 would both be written"):
        plan_outputs(f"{tmp_path}/", [items[0], replace(items[0], index=1)], "x.png", name="fixed")


@pytest.mark.numerics
@pytest.mark.parametrize("rows_per_item", [1, 2])  # 2: a guided UNet's [uncond, cond] pair per item
def test_batch_invariant_mode_computes_what_one_item_runs_compute(rows_per_item):
    torch.manual_seed(0)
    conv, norm, linear = torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.Linear(16, 24)

    def block(x):
        h = F.silu(norm(conv(x)))
        tokens = h.flatten(2).transpose(1, 2)  # [B, HW, C]
        q = linear(tokens).unflatten(-1, (3, 8)).transpose(1, 2)  # [B, heads, HW, d]
        return F.scaled_dot_product_attention(q, q, q) + linear(h.mean((2, 3)))[:, None, None, :8]

    x = torch.randn(5 * rows_per_item, 8, 12, 11)
    with torch.no_grad():
        with batch_invariant(1, True):
            alone = torch.cat([block(part) for part in x.split(rows_per_item)])
        with batch_invariant(5, True):
            together = block(x)
        plain = block(x)
    assert torch.equal(together, alone)
    # The same maths summed in other orders (per-item kernels): float32, 3.6e-7 apart at worst on values ≲ 1;
    # 1e-5 (+ 1e-5 relative) is > 25× that, a dropped mask or scale is O(0.1) off.
    assert_within(together, plain, atol=1e-5, rtol=1e-5, what="invariant vs plain")


@pytest.mark.numerics
def test_batch_invariant_mode_keeps_broadcasting_masks_and_in_place_calls():
    torch.manual_seed(1)
    q = torch.randn(3, 2, 5, 4)
    shared_kv = torch.randn(1, 2, 7, 4)  # broadcast over the batch
    per_item_mask = torch.randn(3, 1, 5, 7)
    broadcast_mask = torch.randn(5, 7)
    x = torch.randn(4, 6).t()  # non-contiguous
    with torch.no_grad():
        expected = [
            F.scaled_dot_product_attention(q, shared_kv, shared_kv),
            F.scaled_dot_product_attention(q, shared_kv, shared_kv, per_item_mask),
            F.scaled_dot_product_attention(q, shared_kv, shared_kv, attn_mask=broadcast_mask),
            F.linear(input=x.t(), weight=torch.ones(3, 6)),
        ]
        with batch_invariant(3, True):
            got = [
                F.scaled_dot_product_attention(q, shared_kv, shared_kv),
                F.scaled_dot_product_attention(q, shared_kv, shared_kv, per_item_mask),
                F.scaled_dot_product_attention(q, shared_kv, shared_kv, attn_mask=broadcast_mask),
                F.linear(input=x.t(), weight=torch.ones(3, 6)),
            ]
            y = x.clone()
            F.silu(y, inplace=True)
    for a, b in zip(expected, got):  # as above: 4.8e-7 apart at worst on values ≲ 3 (torch.allclose's bounds)
        assert_within(b, a, atol=1e-6, rtol=1e-5, what="invariant vs plain")
    assert torch.equal(y, F.silu(x))


def test_input_lines_split_at_newlines_only():
    assert split_lines('{"prompt": "a\u2028b"}\r\nsecond\x0cpage\n\nlast') == ['{"prompt": "a\u2028b"}', "second\x0cpage", "", "last"]


def test_a_half_written_item_is_made_again_and_may_replace_its_leftover(tmp_path):
    """A kill between the sidecar's rename and the WAV's leaves a sidecar alone: not done, and
    --skip-existing replaces it instead of refusing to clobber it."""
    items = [Item(index=i, seed=i, slug="s", stem="t", mode="refined") for i in range(2)]
    (tmp_path / "0.wav").write_bytes(b"RIFF")
    (tmp_path / "0.json").write_text("{}")
    (tmp_path / "1.json").write_text("{}")
    plan = plan_job(items, output=f"{tmp_path}/", name="{index}", default_name="x.wav", shard=Shard(0, 1, "default"),
                    skip_existing=True, overwrite=False, seed_given=True, companions=lambda p: [p.with_suffix(".json")])
    assert plan.skipped == 1 and [p.item.index for p in plan.pending] == [1] and plan.pending[0].replace
