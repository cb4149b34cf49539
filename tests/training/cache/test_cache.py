"""The latent cache: same losses as on-the-fly encoding, no encoder constructed, stale or
foreign caches refused naming the field, resumable and content-addressed precompute, damaged
members detected by their sha256."""

from __future__ import annotations

import functools
import math
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_tensors

from training.cache.precompute import bytes_per_sample, plan_precompute, run_local
from training.cache.settings import FIELD_SOURCES, CacheSettings
from training.cache.store import CacheError, CacheIndex
from training.data.synthetic import make_bad_shard, make_data
from training.preflight import preflight
from training.trainer import Trainer

from ...conftest import tiny_config

# Each test precomputes or trains tiny models end to end (~1 s each, ~25 s together): the slow
# tier, so the quick tier stays near two minutes.
pytestmark = pytest.mark.slow

QUIET = ("log.tensorboard=false", "checkpoint.every_steps=1000")


def _precompute(cfg, **kw):
    plan = plan_precompute(cfg, **kw)
    return plan, run_local(plan, device="cpu")


@pytest.fixture(scope="module")
def wan_cache(tiny_wan, video_shards, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache") / "wan"
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path_factory.mktemp("runs"), f"data.cache={root}")
    _, totals = _precompute(cfg)
    assert totals == {"shards": 3, "samples": 48, "encoded": 48, "reused": 0}
    return root


def _shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*.tar"))}


def test_training_from_the_cache_gives_the_losses_of_on_the_fly_encoding(tiny_wan, video_shards, wan_cache,
                                                                          tmp_path):
    common = ("train.max_steps=5", "train.batch_size=2", *QUIET)
    fly = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=fly", *common)).run()
    cached = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=cached",
                                 f"data.cache={wan_cache}", *common)).run()
    assert sorted(cached.losses) == [1, 2, 3, 4, 5]
    for step, loss in fly.losses.items():
        assert cached.losses[step] == pytest.approx(loss, abs=1e-6, rel=0)


def test_sd3_samples_the_cached_posterior_like_on_the_fly(tiny_sd3, image_shards, tmp_path):
    # SD3 draws latents from the posterior with the run's generator: the cache keeps mean and
    # std, the draw happens at training time, from the same generator state.
    cache = tmp_path / "cache"
    common = ("train.max_steps=3", *QUIET)
    _precompute(tiny_config("sd3", tiny_sd3, image_shards, tmp_path, f"data.cache={cache}"))
    fly = Trainer(tiny_config("sd3", tiny_sd3, image_shards, tmp_path, "run_name=fly", *common)).run()
    cached = Trainer(tiny_config("sd3", tiny_sd3, image_shards, tmp_path, "run_name=cached",
                                 f"data.cache={cache}", *common)).run()
    for step, loss in fly.losses.items():
        assert cached.losses[step] == pytest.approx(loss, abs=1e-6, rel=0)


def test_training_from_the_cache_never_constructs_the_vae_or_text_encoder(tiny_wan, video_shards, wan_cache,
                                                                          tmp_path, monkeypatch):
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    built = []

    def refuse(cls):
        original = cls.__init__

        @functools.wraps(original)  # diffusers reads the signature to register the config
        def init(self, *args, **kwargs):
            built.append(cls.__name__)
            original(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", init)

    refuse(AutoencoderKLWan)
    refuse(UMT5EncoderModel)
    trainer = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, f"data.cache={wan_cache}",
                                  "train.max_steps=2", *QUIET))
    trainer.run()
    assert built == []
    assert trainer.pipe.vae is None and trainer.pipe.text_encoder is None
    # The probe itself works: on-the-fly training builds both.
    Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=fly", "train.max_steps=1", *QUIET)).run()
    assert sorted(set(built)) == ["AutoencoderKLWan", "UMT5EncoderModel"]


def test_resume_from_the_cache_is_exact(tiny_wan, video_shards, wan_cache, tmp_path):
    common = (f"data.cache={wan_cache}", "log.tensorboard=false", "checkpoint.every_steps=2")
    whole = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=whole",
                                "train.max_steps=4", *common)).run()
    Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=cut", "train.max_steps=2", *common)).run()
    resumed = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=cut", "train.max_steps=4",
                                  "train.resume=auto", *common)).run()
    assert [resumed.losses[s] for s in (3, 4)] == [whole.losses[s] for s in (3, 4)]


@pytest.mark.parametrize("override, field", [
    ("model.vae_dtype=bf16", "vae_dtype"),
    ("model.text_encoder_dtype=bf16", "text_encoder_dtype"),
    ("data.width=16", "width"),
    ("data.height=16", "height"),
    ("data.frames=5", "frames"),
    ("data.fps=4", "fps"),
    ("data.max_text_length=16", "max_text_length"),
    ("data.long_captions=skip", "long_captions"),
])
def test_a_cache_made_with_other_settings_is_refused_naming_the_field(tiny_wan, video_shards, wan_cache,
                                                                      tmp_path, override, field):
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, f"data.cache={wan_cache}", override)
    with pytest.raises(CacheError, match="other settings") as info:
        preflight(cfg, 0, 1)  # before any model loads
    assert FIELD_SOURCES[field] in str(info.value)
    assert sum(source in str(info.value) for source in FIELD_SOURCES.values()) == 1  # that field only


@pytest.mark.parametrize("component, field", [("vae", "vae"), ("text_encoder", "text_encoders")])
def test_other_encoder_weights_are_refused(tiny_wan, video_shards, wan_cache, tmp_path, component, field):
    model = tmp_path / "model"
    shutil.copytree(tiny_wan, model)
    weights = next((model / component).glob("*.safetensors"))
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3  # same shapes and config, other weights
    save_file(tensors, str(weights))
    cfg = tiny_config("wan", model, video_shards, tmp_path, f"data.cache={wan_cache}")
    with pytest.raises(CacheError) as info:
        preflight(cfg, 0, 1)
    assert FIELD_SOURCES[field] in str(info.value)


def test_the_crop_rule_and_the_format_version_are_part_of_the_key(tiny_wan, video_shards, wan_cache, tmp_path,
                                                                    monkeypatch):
    import training.cache.settings as settings
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, f"data.cache={wan_cache}")
    index = CacheIndex.load(wan_cache)
    index.check_settings(CacheSettings.for_run(cfg))  # unchanged: accepted
    monkeypatch.setattr(settings, "CROP_POLICY", "another-rule")
    monkeypatch.setattr(settings, "CACHE_FORMAT_VERSION", 99)
    with pytest.raises(CacheError) as info:
        index.check_settings(CacheSettings.for_run(cfg))
    assert FIELD_SOURCES["crop"] in str(info.value) and FIELD_SOURCES["format_version"] in str(info.value)


def test_predicted_bytes_per_sample_are_the_bytes_written(tiny_wan, tiny_sd3, video_shards, image_shards, wan_cache,
                                                           tmp_path):
    def tensor_bytes(root: Path) -> int:
        with tarfile.open(next((root / "shards").glob("*.tar"))) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".safetensors"))
            tensors = load_tensors(tar.extractfile(member).read())
        return sum(t.numel() * t.element_size() for t in tensors.values())

    wan_cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, f"data.cache={wan_cache}")
    assert bytes_per_sample(wan_cfg, CacheSettings.for_run(wan_cfg)) == tensor_bytes(wan_cache)
    sd3_cache = tmp_path / "sd3"
    sd3_cfg = tiny_config("sd3", tiny_sd3, image_shards, tmp_path, f"data.cache={sd3_cache}",
                          "model.vae_dtype=bf16")
    _precompute(sd3_cfg)
    assert bytes_per_sample(sd3_cfg, CacheSettings.for_run(sd3_cfg)) == tensor_bytes(sd3_cache)


def test_an_interrupted_precompute_finishes_only_what_is_missing(tiny_wan, video_shards, wan_cache, tmp_path):
    root = tmp_path / "cache"
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, f"data.cache={root}")
    plan = plan_precompute(cfg)

    def crash(source, entry):
        raise KeyboardInterrupt  # the job is killed after its first shard

    with pytest.raises(KeyboardInterrupt):
        run_local(plan, device="cpu", on_shard=crash)
    again = plan_precompute(cfg)
    assert len(again.todo) == 2
    assert run_local(again, device="cpu") == {"shards": 2, "samples": 32, "encoded": 32, "reused": 0}
    assert plan_precompute(cfg).todo == []
    # Byte for byte the cache made in one go: the bytes depend on the sources and settings only.
    assert _shard_bytes(root) == _shard_bytes(wan_cache)


def test_a_changed_source_shard_is_recomputed_only_where_it_changed(tiny_wan, tmp_path):
    data = tmp_path / "data"
    make_data("video", data, shards=2, samples_per_shard=4, seed=0, size=(32, 32), frames=9)
    cfg = tiny_config("wan", tiny_wan, data, tmp_path, f"data.cache={tmp_path / 'cache'}")
    _precompute(cfg)
    shard = sorted(data.glob("*.tar"))[1]
    with tarfile.open(shard) as tar:  # one caption of the second shard edited
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        edited = False
        for m, body in members:
            if m.name.endswith(".txt") and not edited:
                body, edited = body + b" and a blue circle", True
                m.size = len(body)
            import io
            tar.addfile(m, io.BytesIO(body))
    plan, totals = _precompute(cfg)
    assert plan.todo == [str(shard)]
    assert totals == {"shards": 1, "samples": 4, "encoded": 1, "reused": 3}


def test_a_damaged_member_is_detected_by_its_hash_and_verify_repairs_it(tiny_wan, video_shards, wan_cache,
                                                                        tmp_path):
    root = tmp_path / "cache"
    shutil.copytree(wan_cache, root)
    shard = sorted((root / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".safetensors"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size - 3] ^= 0xFF  # one byte of a tensor, same size
    shard.write_bytes(bytes(data))
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, f"data.cache={root}", "train.max_steps=30",
                      "data.shuffle_buffer=0", *QUIET)
    with pytest.raises(CacheError, match=r"damaged.*--verify") as info:
        Trainer(cfg).run()
    assert member.name.split(".")[0] in str(info.value)
    assert plan_precompute(cfg).todo == []  # the cheap checks cannot see inside a member
    plan, totals = _precompute(cfg, verify=True)
    assert plan.todo == [next(s for s, e in plan.index.shards.items() if e["cache"].endswith(shard.name))]
    assert totals["encoded"] == 1 and totals["reused"] == 15
    assert _shard_bytes(root) == _shard_bytes(wan_cache)


def test_bad_samples_are_counted_as_on_the_fly(tiny_wan, tmp_path):
    data = tmp_path / "data"
    make_data("video", data, shards=1, samples_per_shard=4, seed=0, size=(32, 32), frames=9)
    bad = make_bad_shard(data / "bad.tar", (32, 32), 9, kind="video")
    common = ("train.max_steps=6", "data.shuffle_buffer=0", "data.max_bad_fraction=0.9", *QUIET)
    cache = tmp_path / "cache"
    _precompute(tiny_config("wan", tiny_wan, data, tmp_path, f"data.cache={cache}", "data.max_bad_fraction=0.9"))
    fly = Trainer(tiny_config("wan", tiny_wan, data, tmp_path, "run_name=fly", *common))
    fly.run()
    cached = Trainer(tiny_config("wan", tiny_wan, data, tmp_path, "run_name=cached", f"data.cache={cache}", *common))
    cached.run()
    want = fly.position.skip_counter().report()
    assert want["skips_by_reason"] == bad and cached.position.skip_counter().report() == want


def test_precompute_needs_a_cache_folder(tiny_wan, video_shards, tmp_path):
    from training.config import ConfigError
    with pytest.raises(ConfigError, match="data.cache"):
        plan_precompute(tiny_config("wan", tiny_wan, video_shards, tmp_path))
    assert math.isfinite(float(torch.zeros(1)))  # keeps the torch import honest


def test_moved_data_reuses_the_cache_by_content(tiny_wan, video_shards, wan_cache, tmp_path):
    root, moved = tmp_path / "cache", tmp_path / "moved"
    shutil.copytree(wan_cache, root)
    shutil.copytree(video_shards, moved)
    cfg = tiny_config("wan", tiny_wan, moved, tmp_path, f"data.cache={root}")
    with pytest.raises(CacheError, match="no entry for source shard"):
        preflight(cfg, 0, 1)  # the cache is indexed by the shards' paths
    plan, totals = _precompute(cfg)
    assert len(plan.todo) == 3 and totals["encoded"] == 0 and totals["reused"] == 48
    new = {p.name for p in (root / "shards").glob("*.tar")} - set(_shard_bytes(wan_cache))
    # Same bytes as before the move (the cache records file names, not where data is mounted).
    assert sorted((root / "shards" / n).read_bytes() for n in new) == sorted(_shard_bytes(wan_cache).values())
    preflight(cfg, 0, 1)
