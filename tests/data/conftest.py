"""Small real shards shared by the data tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.synthetic import make_bad_shard, make_data

SIZE = (32, 32)  # (width, height)
FRAMES = 5


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> list[Path]:
    return make_data("video", tmp_path_factory.mktemp("dv") / "video", shards=2, samples_per_shard=4,
                     seed=0, size=SIZE, frames=FRAMES)


@pytest.fixture(scope="session")
def small_image(tmp_path_factory) -> list[Path]:
    return make_data("image", tmp_path_factory.mktemp("di") / "image", shards=2, samples_per_shard=4,
                     seed=0, size=SIZE)


@pytest.fixture(scope="session")
def bad_video(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("bad") / "bad-video.tar"
    return path, make_bad_shard(path, SIZE, FRAMES, kind="video")


@pytest.fixture(scope="session")
def bad_image(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("bad") / "bad-image.tar"
    return path, make_bad_shard(path, SIZE, FRAMES, kind="image")
