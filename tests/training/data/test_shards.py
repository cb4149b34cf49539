"""Shard spec expansion and per-epoch worker assignment."""

from __future__ import annotations

import pytest

from training.data.shards import epoch_plan, list_shards, shard_assignment


@pytest.fixture()
def shard_dir(tmp_path):
    for i in range(4):
        (tmp_path / f"shard-{i:06d}.tar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a shard")
    return tmp_path


def test_directory(shard_dir):
    assert list_shards(str(shard_dir)) == [str(shard_dir / f"shard-{i:06d}.tar") for i in range(4)]


def test_brace_pattern(shard_dir):
    assert list_shards(f"{shard_dir}/shard-{{000001..000002}}.tar") == [
        f"{shard_dir}/shard-000001.tar", f"{shard_dir}/shard-000002.tar"]


def test_list(shard_dir):
    spec = [f"{shard_dir}/shard-000003.tar", f"{shard_dir}/shard-{{000000..000001}}.tar"]
    assert list_shards(spec) == [f"{shard_dir}/shard-00000{i}.tar" for i in (3, 0, 1)]


def test_remote_specs_pass_through():
    spec = ["pipe:curl -s https://x/y.tar", "s3://bucket/a.tar", "gs://b/c-{0..1}.tar"]
    assert list_shards(spec) == ["pipe:curl -s https://x/y.tar", "s3://bucket/a.tar", "gs://b/c-0.tar", "gs://b/c-1.tar"]


def test_missing_paths_are_named(shard_dir):
    with pytest.raises(FileNotFoundError) as exc:
        list_shards(f"{shard_dir}/shard-{{000000..000011}}.tar")
    msg = str(exc.value)
    assert "8 shard path(s)" in msg and "shard-000004.tar" in msg and "and 3 more" in msg
    assert "shard-000011.tar" not in msg  # at most 5 listed


def test_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        list_shards(str(tmp_path))


def test_duplicates(shard_dir):
    with pytest.raises(ValueError, match="more than once"):
        list_shards([str(shard_dir), f"{shard_dir}/./shard-000002.tar"])


def test_assignment_is_disjoint_complete_and_deterministic():
    shards = [f"s{i}.tar" for i in range(7)]
    parts = [shard_assignment(shards, seed=3, epoch=1, rank=r, world_size=3) for r in range(3)]
    assert sorted(s for p in parts for s in p) == sorted(shards)
    assert sum(len(p) for p in parts) == 7 and {len(p) for p in parts} == {2, 3}
    assert parts == [shard_assignment(shards, seed=3, epoch=1, rank=r, world_size=3) for r in range(3)]


def test_assignment_changes_across_epochs_and_seeds():
    shards = [f"s{i}.tar" for i in range(8)]
    orders = {tuple(shard_assignment(shards, 0, e, 0, 1)) for e in range(5)}
    assert len(orders) > 1
    assert shard_assignment(shards, 0, 0, 0, 1) != shard_assignment(shards, 1, 0, 0, 1)


def test_too_few_shards_for_workers():
    with pytest.raises(ValueError, match="at least one shard"):
        shard_assignment(["only.tar"], seed=0, epoch=0, rank=0, world_size=2)


# ----------------------------------------------------------------------------- epoch plans

SIZES = {"a.tar": 7, "b.tar": 3, "c.tar": 5, "d.tar": 2, "e.tar": 4}


@pytest.mark.parametrize("epoch", range(4))
def test_epoch_plan_matches_assignment(epoch):
    shards = list(SIZES)
    plan = epoch_plan(shards, SIZES, seed=5, epoch=epoch, world_size=2, batch_size=2)
    assert plan.epoch == epoch and plan.world_size == 2 and plan.batch_size == 2
    assert [list(p) for p in plan.shards] == [shard_assignment(shards, 5, epoch, r, 2) for r in range(2)]
    assert plan.raw_samples == tuple(sum(SIZES[s] for s in p) for p in plan.shards)
    assert sum(plan.raw_samples) == 21
    assert plan.samples_per_rank == min(plan.raw_samples) // 2 * 2 > 0
    assert plan.dropped == tuple(n - plan.samples_per_rank for n in plan.raw_samples)
    assert f"epoch {epoch}: {plan.samples_per_rank} samples per rank (batch 2)" in plan.summary()
    assert plan == epoch_plan(shards, dict(SIZES), seed=5, epoch=epoch, world_size=2, batch_size=2)


def test_epoch_plan_below_one_batch_names_rank_shards_and_fixes():
    counts = {"big.tar": 50, "tiny.tar": 3}
    plan = epoch_plan(list(counts), counts, seed=0, epoch=0, world_size=2, batch_size=3)
    assert plan.samples_per_rank == 3
    with pytest.raises(ValueError) as exc:
        epoch_plan(list(counts), counts, seed=0, epoch=7, world_size=2, batch_size=4)
    msg = str(exc.value)
    tiny_rank = next(r for r in range(2) if shard_assignment(list(counts), 0, 7, r, 2) == ["tiny.tar"])
    for part in ("epoch 7", f"rank {tiny_rank} of 2", "tiny.tar", "only 3 sample(s)", "batch_size=4",
                 "more or larger shards", "fewer data workers", "smaller batch size"):
        assert part in msg


def test_epoch_plan_input_errors():
    with pytest.raises(ValueError, match="at least one shard"):
        epoch_plan(["only.tar"], {"only.tar": 10}, seed=0, epoch=0, world_size=2, batch_size=1)
    with pytest.raises(ValueError, match="no sample count for shard.*d.tar"):
        epoch_plan(list(SIZES), {k: v for k, v in SIZES.items() if k != "d.tar"}, 0, 0, 2, 1)
    with pytest.raises(ValueError, match="batch_size"):
        epoch_plan(list(SIZES), SIZES, 0, 0, 2, 0)
