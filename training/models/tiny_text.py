"""Tokenizers built locally (no download) for tiny test models.

The vocabulary covers the words of the synthetic captions plus single characters, so any
caption tokenises (unknown words fall back to characters) and caption words map to whole
tokens, which is what makes the synthetic data learnable through the text path.
"""

from __future__ import annotations

from transformers import CLIPTokenizer, T5Tokenizer

# Words used by training.data.synthetic captions, and common prompt words.
CAPTION_WORDS = (
    "a an the red green blue yellow white black square circle triangle moving left right up down "
    "of on in and with video image photo"
).split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,-'")


def t5_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """A unigram T5/UMT5-style tokenizer: whole caption words, character fallback."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in CAPTION_WORDS]
    vocab += [("\u2581", -2.0)] + [(c, -5.0) for c in _CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A BPE CLIP-style tokenizer whose merges rebuild each caption word."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in CAPTION_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if (parts[0], parts[1]) not in merges:
                merges.append((parts[0], parts[1]))
            vocab.setdefault(merged, len(vocab))
            parts = [merged] + parts[2:]
    # CLIP's model_max_length is 77 in real checkpoints; the SD3 pipeline reads it from here.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
