import hashlib

import numpy as np
import pytest

from training.media_io import encode_mp4, encode_sample, to_uint8


def test_mp4_encode_is_byte_deterministic_and_decodes():
    import av, io
    # A smooth moving gradient: what 4:2:0 H.264 is meant to carry (per-pixel noise is not).
    y, x = np.mgrid[0:32, 0:48]
    frames = np.stack([np.stack([(x * 5 + t * 8) % 256, y * 7, np.full_like(x, 100 + t * 10)], -1)
                       for t in range(9)]).astype(np.uint8)
    digests = {hashlib.sha256(encode_mp4(frames, fps=8)).hexdigest() for _ in range(8)}
    assert len(digests) == 1
    with av.open(io.BytesIO(encode_mp4(frames, fps=8))) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == (9, 32, 48, 3)
    assert np.abs(decoded.astype(float) - frames).mean() < 6  # lossy, but close at crf 18


def test_mp4_rejects_odd_sizes_and_bad_shapes():
    with pytest.raises(ValueError, match="even width and height"):
        encode_mp4(np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        encode_mp4(np.zeros((2, 32, 32), np.uint8))


def test_to_uint8_rounds_and_clips(tmp_path):
    assert to_uint8(np.array([-0.1, 0.0, 0.5, 1.0, 1.2])).tolist() == [0, 0, 128, 255, 255]
    from PIL import Image
    p = tmp_path / "x.png"
    p.write_bytes(encode_sample(np.ones((4, 6, 3)) * 0.5, "image", fps=16))
    assert Image.open(p).size == (6, 4) and np.asarray(Image.open(p))[0, 0].tolist() == [128, 128, 128]
