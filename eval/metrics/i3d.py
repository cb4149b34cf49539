"""Inception-I3D (Carreira & Zisserman 2017), the Kinetics-400 video classifier behind FVD.

The module and parameter names follow the widely used PyTorch port (piergiaj/pytorch-i3d, as
vendored by VideoGPT and TATS), so the ``i3d_pretrained_400.pt`` state dict those projects
converted from the TF-Hub FVD model loads with ``strict=True``:

    Conv3d_1a_7x7 -> MaxPool3d_2a_3x3 -> Conv3d_2b_1x1 -> Conv3d_2c_3x3 -> MaxPool3d_3a_3x3
    -> Mixed_3b, Mixed_3c -> MaxPool3d_4a_3x3 -> Mixed_4b..Mixed_4f -> MaxPool3d_5a_2x2
    -> Mixed_5b, Mixed_5c -> avg pool [2, 7, 7] -> logits (1x1x1 conv with bias)

Every convolution and max pool pads the TensorFlow 'SAME' way (asymmetric, extra on the end), as
the TF original does. Input is (B, 3, T, 224, 224) in [-1, 1]; output is (B, 400) logits averaged
over the remaining time steps (one step for 16 frames). T must be at least 9: three stride-2
stages leave ceil(T/8) steps and the average pool needs 2.

``load_i3d`` accepts that state dict (plain, ``{"state_dict": ...}``-wrapped or with
``module.`` prefixes) or a TorchScript file, such as StyleGAN-V's ``i3d_torchscript.pt``.
No weights ship with this package: FVD needs a user-supplied file (see ``eval/metrics/fvd.py``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.errors import MissingFileError

NUM_CLASSES = 400
MIN_FRAMES = 9
INPUT_SIZE = 224

# VideoGPT's port (which wrote and reads i3d_pretrained_400.pt, as does TATS) uses eps=1e-5; the
# TF original and piergiaj's port use 1e-3. Numbers match VideoGPT/TATS FVD only with 1e-5.
DEFAULT_BN_EPS = 1e-5

# The extra file inside a TorchScript archive (and the key in a state-dict wrapper) where we
# record that weights are random, so a demo number can never pass for a real FVD.
_MARKER = "lorabench_i3d.json"
RANDOM_WEIGHTS_NOTE = ("random I3D weights: FVD values computed with them are meaningless numbers, "
                       "useful only to exercise the code path")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (front, back) for one dimension: output length ceil(size / stride)."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    pt = _same_padding(x.shape[2], kernel[0], stride[0])
    ph = _same_padding(x.shape[3], kernel[1], stride[1])
    pw = _same_padding(x.shape[4], kernel[2], stride[2])
    # Zero padding, as the reference: every max pool follows a ReLU, so 0 acts like -inf there.
    return F.pad(x, [pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]])


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else (int(v[0]), int(v[1]), int(v[2]))


class Unit3D(nn.Module):
    """SAME-padded Conv3d, then BatchNorm3d and ReLU (both optional); submodules ``conv3d``, ``bn``."""

    # Constants, so TorchScript drops the branch that reads a missing ``bn`` (the logits unit has none).
    __constants__ = ["use_bn", "use_relu"]

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int, int] = 1,
                 stride: int | tuple[int, int, int] = 1, *, batch_norm: bool = True, relu: bool = True,
                 bias: bool = False, bn_eps: float = DEFAULT_BN_EPS):
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)
        self.use_bn = batch_norm
        self.use_relu = relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        if batch_norm:
            self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.use_bn:
            x = self.bn(x)
        if self.use_relu:
            x = F.relu(x)
        return x


class SameMaxPool3d(nn.Module):
    """Max pool with TF 'SAME' (zero) padding; no parameters."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels.

    ``widths`` = (b0 1x1, b1 1x1 reduce, b1 3x3, b2 1x1 reduce, b2 3x3, b3 1x1 after the pool),
    the order of the I3D paper's table and of the reference port.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int], bn_eps: float):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0, 1, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, w1a, 1, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, 3, bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, w2a, 1, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, 3, bn_eps=bn_eps)
        self.b3a = SameMaxPool3d((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3, 1, bn_eps=bn_eps)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, in_channels, branch widths) of the mixed blocks, with the pools between them.
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D with 400 Kinetics logits; ``forward(x [B,3,T,224,224] in [-1,1]) -> [B,400]``.

    Inference only: the reference's dropout before the logits (no state) is left out. Logits are
    averaged over the time steps left after the [2, 7, 7] average pool, as VideoGPT's FVD does.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, bn_eps: float = DEFAULT_BN_EPS):
        super().__init__()
        self.num_classes = num_classes
        self.bn_eps = bn_eps
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, 2, bn_eps=bn_eps)
        self.MaxPool3d_2a_3x3 = SameMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1, bn_eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3, bn_eps=bn_eps)
        self.MaxPool3d_3a_3x3 = SameMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_MIXED["Mixed_3b"], bn_eps=bn_eps)
        self.Mixed_3c = InceptionModule(*_MIXED["Mixed_3c"], bn_eps=bn_eps)
        self.MaxPool3d_4a_3x3 = SameMaxPool3d((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(*_MIXED["Mixed_4b"], bn_eps=bn_eps)
        self.Mixed_4c = InceptionModule(*_MIXED["Mixed_4c"], bn_eps=bn_eps)
        self.Mixed_4d = InceptionModule(*_MIXED["Mixed_4d"], bn_eps=bn_eps)
        self.Mixed_4e = InceptionModule(*_MIXED["Mixed_4e"], bn_eps=bn_eps)
        self.Mixed_4f = InceptionModule(*_MIXED["Mixed_4f"], bn_eps=bn_eps)
        self.MaxPool3d_5a_2x2 = SameMaxPool3d((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_MIXED["Mixed_5b"], bn_eps=bn_eps)
        self.Mixed_5c = InceptionModule(*_MIXED["Mixed_5c"], bn_eps=bn_eps)
        self.logits = Unit3D(self.Mixed_5c.out_channels, num_classes, 1, batch_norm=False, relu=False, bias=True)
        self.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c output (B, 1024, ceil(T/8), 7, 7) for a 224x224 input."""
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        x = self.MaxPool3d_5a_2x2(x)
        return self.Mixed_5c(self.Mixed_5b(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool3d(self.features(x), kernel_size=(2, 7, 7), stride=1)
        x = self.logits(x)  # (B, classes, T', H', W'); H' = W' = 1 at 224x224
        return x.mean(dim=(3, 4)).mean(dim=2)


# ---------------------------------------------------------------------------------------------
# Loading and saving


class TorchScriptI3D(nn.Module):
    """A TorchScript I3D behind the same call as :class:`InceptionI3d`: (B,3,T,224,224) in [-1,1] -> (B,400).

    StyleGAN-V's ``i3d_torchscript.pt`` takes ``(x, rescale, resize, return_features)``; we call it
    with ``rescale=False, resize=False, return_features=True`` (we resize and scale to [-1, 1]
    ourselves, as the FVD ports built on it do), which returns the 400 pre-softmax logits.
    A TorchScript file with a plain ``forward(x)`` (e.g. a traced InceptionI3d) is called as is.
    """

    def __init__(self, module: torch.jit.ScriptModule, stylegan_v_signature: bool):
        super().__init__()
        self.module = module
        self.stylegan_v_signature = stylegan_v_signature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stylegan_v_signature:
            return self.module(x, rescale=False, resize=False, return_features=True)
        return self.module(x)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips holding a ``code/`` folder; ``torch.save`` zips do not."""
    if not zipfile.is_zipfile(path):
        return False  # legacy torch.save pickle
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def _unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensor dict inside a checkpoint, and our marker metadata if the file carries it."""
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        meta = obj.get(_MARKER, {}) if isinstance(obj.get(_MARKER), dict) else {}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected an I3D state dict (name -> tensor), got {type(obj).__name__}; "
                         f"give the i3d_pretrained_400.pt state dict or a TorchScript file")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, meta


def _load_state_dict_file(path: Path, bn_eps: float) -> InceptionI3d:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state, meta = _unwrap_state_dict(obj, path)
    model = InceptionI3d(bn_eps=bn_eps)
    # The converted file has no BatchNorm num_batches_tracked buffers; they are bookkeeping for
    # training and never used in eval mode, so their absence is not a mismatch.
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: not an InceptionI3d-400 state dict (pytorch-i3d / VideoGPT layout). "
                         f"Missing keys ({len(missing)}): {missing[:20]}; unexpected keys ({len(unexpected)}): "
                         f"{unexpected[:20]}")
    full = model.state_dict()
    full.update(state)
    model.load_state_dict(full, strict=True)  # also checks every shape
    model.random_weights = bool(meta.get("random_weights", False))
    model.file_format = "state_dict"
    return model.eval()


def _load_torchscript_file(path: Path) -> TorchScriptI3D:
    extra = {_MARKER: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    args = [a.name for a in module.forward.schema.arguments]
    wrapper = TorchScriptI3D(module.eval(), stylegan_v_signature="return_features" in args)
    meta = json.loads(extra[_MARKER]) if extra[_MARKER] else {}
    wrapper.random_weights = bool(meta.get("random_weights", False))
    wrapper.file_format = "torchscript"
    return wrapper.eval()


def load_i3d(path: str | Path, *, bn_eps: float = DEFAULT_BN_EPS) -> nn.Module:
    """Load I3D weights from ``path``: a state dict or a TorchScript file (detected from the file).

    Returns a module mapping (B, 3, T, 224, 224) in [-1, 1] to (B, 400) logits, in eval mode, with
    attributes ``file_format`` ("state_dict" | "torchscript") and ``random_weights``.
    ``bn_eps`` applies to state dicts only (a TorchScript file carries its own).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"I3D weights not found: {path}. FVD needs a local Kinetics-400 I3D file: "
                                f"StyleGAN-V's i3d_torchscript.pt or VideoGPT's i3d_pretrained_400.pt; "
                                f"set metrics.fvd.i3d_path to it")
    if _is_torchscript(path):
        return _load_torchscript_file(path)
    return _load_state_dict_file(path, bn_eps)


def random_i3d(seed: int = 0, bn_eps: float = DEFAULT_BN_EPS) -> InceptionI3d:
    """An InceptionI3d with seeded random weights and non-trivial BatchNorm statistics (meaningless numbers)."""
    gen = torch.Generator().manual_seed(seed)
    model = InceptionI3d(bn_eps=bn_eps)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif name.endswith("bn.weight"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:  # conv weights: He-style scale keeps activations finite through 60-odd layers
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    model.random_weights = True
    return model.eval()


def save_random_i3d(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weights I3D state dict to ``path`` (for tests and demos only).

    The weights are meaningless: FVD computed with them is not FVD. The file is wrapped as
    ``{"state_dict": ..., "lorabench_i3d.json": {"random_weights": True, ...}}`` so that
    :func:`load_i3d` flags every result computed with it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = random_i3d(seed).state_dict()
    torch.save({"state_dict": state, _MARKER: {"random_weights": True, "seed": seed, "note": RANDOM_WEIGHTS_NOTE}},
               path)
    return path


def save_torchscript_i3d(model: nn.Module, path: str | Path, *, random_weights: bool = False) -> Path:
    """Script ``model`` (any input shape keeps working) and save it as a TorchScript file.

    ``random_weights`` is recorded inside the archive so :func:`load_i3d` flags results made with it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(model.eval())
    torch.jit.save(scripted, str(path), _extra_files={_MARKER: json.dumps({"random_weights": bool(random_weights)})})
    return path
