"""Tiny random metric models for tests and demos, built without any download.

They load through the same paths as real checkpoints (``ClipModel(folder)`` ->
``from_pretrained``; ``I3DExtractor(file)`` -> ``load_i3d``), so tests exercise the real code.
Their numbers are meaningless: random weights.
"""

from __future__ import annotations

from pathlib import Path

# Words that become single tokens in the tiny tokenizer, so an ordinary English prompt costs
# about as many tokens as with the real CLIP BPE (letters alone would make ~1 token per letter,
# and prompts that fit the real 77-token limit would not fit here).
_COMMON_WORDS = """
a an the of in on at to and with by for from into over under near behind through is are
photo picture image video painting drawing render illustration portrait landscape close up shot
cat dog bird horse fish cow person man woman child people car bicycle boat train tree flower
forest mountain river lake sea ocean beach sky cloud clouds sun moon star city street road house
building room table chair window water snow rain fire light night day morning evening sunset
red green blue yellow white black orange purple pink brown gray golden small large big tiny old
young beautiful cute happy running walking flying swimming sitting standing riding playing
eating dancing jumping looking slowly fast camera style detailed high quality realistic
cinematic anime cartoon oil wooden glass metal field park garden grass
""".split()


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def tiny_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocab + merges in CLIP's format (``</w>`` marks a word's last symbol).

    Every byte, alone and word-final, is in the vocab (so any text tokenizes, nothing is
    unknown), plus merges that spell out ``_COMMON_WORDS``; specials come last, as in CLIP.
    """
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    for word in dict.fromkeys(_COMMON_WORDS):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in seen:
                merges.append((left, right))
                tokens.append(merged)
                seen.add(merged)
            left = merged
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def make_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random CLIPModel + tokenizer + image processor to ``out_dir`` (``save_pretrained`` layout).

    Text: 2 layers, hidden 32, the real 77-token limit. Vision: 2 layers, hidden 32, 32x32 input,
    8x8 patches. Projection 16-d. Image processor: CLIP's (bicubic shortest-edge resize, center
    crop, CLIP mean/std) at 32 px.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from .clip_model import RANDOM_FLAG, image_processor_class

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    setattr(config, RANDOM_FLAG, True)  # saved in config.json; ClipModel reports random_weights
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def make_random_i3d(out_path: str | Path, seed: int = 0) -> Path:
    """A random-weights I3D state dict at ``out_path`` (flagged as random when loaded)."""
    from .i3d import save_random_i3d
    return save_random_i3d(out_path, seed)


def make_tiny_inception(out_path: str | Path, seed: int = 0, dim: int = 64) -> Path:
    """A tiny random TorchScript image feature extractor with the Inception detector's call signature.

    ``model(x, return_features=True)`` takes NCHW images on the 0-255 scale (uint8 or float), like
    the StyleGAN/clean-fid ``inception-2015-12-05.pt`` detector, and returns [B, ``dim``] features.
    """
    import torch
    from torch import nn

    class TinyInception(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 5, stride=4)
            self.conv2 = nn.Conv2d(16, dim, 3, stride=2)
            self.lorabench_random_weights = True

        def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
            x = (x.float() - 128.0) / 128.0
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            return x.mean(dim=(2, 3))

    torch.manual_seed(seed)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(TinyInception().eval()).save(str(out))
    return out


def make_tiny_metrics(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Tiny CLIP folder, random I3D state dict and tiny Inception under ``out_dir`` (for demos/tests)."""
    out = Path(out_dir)
    return {"clip": make_tiny_clip(out / "clip", seed), "i3d": make_random_i3d(out / "i3d-random.pt", seed),
            "inception": make_tiny_inception(out / "inception-random.pt", seed)}
