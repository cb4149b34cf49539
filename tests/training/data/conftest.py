"""Small real shards shared by the data tests (built once per session)."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import pytest

from training.data.index import shard_sample_counts
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


def counted(shards) -> dict[str, int]:
    """``{shard: samples}`` for a :class:`ShardStream`'s ``sample_counts`` (the shards as strings)."""
    return shard_sample_counts([str(s) for s in shards])


def take(stream, n: int) -> list:
    """The next ``n`` samples of ``stream`` (a new iterator, continuing from its position)."""
    return list(itertools.islice(iter(stream), n))


UNEVEN = (7, 3, 5, 2, 4)  # samples per shard
LONG_CAPTION = ("a red square moving left " * 4000)[:100_000].strip()  # 100k characters, ~20k tokens


def write_tar(path, members) -> None:
    """``members``: ``(name, bytes)`` files, ``("dir", name)``, ``("symlink"|"hardlink", name, target)``."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m in members:
            if m[0] in ("dir", "symlink", "hardlink"):
                info = tarfile.TarInfo(m[1])
                info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[m[0]]
                if m[0] != "dir":
                    info.linkname = m[2]
                tar.addfile(info)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))


def keep_first_samples(src: Path, dst: Path, n: int) -> None:
    """Write ``dst`` as a copy of ``src`` holding only its first ``n`` samples (two members each)."""
    with tarfile.open(src) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()[: 2 * n]]
    with tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def uneven_image(tmp_path_factory) -> list[Path]:
    """Image shards of ``UNEVEN`` sizes with distinct keys (``{shard:06d}_{index:06d}``)."""
    full = make_data("image", tmp_path_factory.mktemp("full") / "image", shards=len(UNEVEN),
                     samples_per_shard=max(UNEVEN), seed=1, size=SIZE)
    out = tmp_path_factory.mktemp("uneven")
    paths = [out / p.name for p in full]
    for src, dst, n in zip(full, paths, UNEVEN):
        keep_first_samples(src, dst, n)
    return paths
