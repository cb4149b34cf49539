"""What to do with a caption longer than the text encoder reads: ``data.long_captions``.

The diffusers pipelines cut a prompt at the text encoder's maximum length without an error.
During training that means the model is taught a caption it never saw in full, so the
policy is explicit and every such caption is counted:

- ``truncate`` (default): train on it, the encoder keeps its first tokens, as at inference;
  counted as ``caption_truncated`` (a sample that is used, not a skip, so it does not count
  against ``data.max_bad_fraction``). Web captions are often longer than CLIP's 77 tokens
  while their beginning still describes the picture, so skipping them by default could drop
  much of a crawl (most of it for SD3's CLIP encoders) without the user asking for it.
- ``skip``: leave the sample out, counted as the skip reason ``caption_too_long``.
- ``error``: stop at the first such caption with a :class:`DataError` naming it.

Length is measured in tokens (special tokens included) with each tokenizer the pipeline uses,
against the limits of :meth:`training.models.base.ModelSpec.text_limits` (e.g. SD3: both
CLIP tokenizers at 77, T5 at the max text length). :func:`long_caption_action` is the pure
decision, shared with prompt checks outside training; :class:`CaptionLengthCheck` applies it
to captions with real tokenizers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

LONG_CAPTION_POLICIES: tuple[str, ...] = ("truncate", "skip", "error")
#: Counted for a caption kept under ``truncate`` (a used sample, not a skip).
TRUNCATED = "caption_truncated"
#: Skip reason for a caption left out under ``skip``.
TOO_LONG = "caption_too_long"
#: Characters per token no real tokenizer reaches on text (see ``CaptionLengthCheck.token_counts``).
CHARS_PER_TOKEN_BOUND = 64


def over_limit(token_counts: Mapping[str, int], limits: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """``{tokenizer: (tokens, limit)}`` for every tokenizer whose count exceeds its limit.

    Raises ``ValueError`` when ``token_counts`` lacks a tokenizer named in ``limits``.
    """
    missing = [name for name in limits if name not in token_counts]
    if missing:
        raise ValueError(f"no token count for {', '.join(missing)} (limits given for {', '.join(limits)})")
    return {name: (int(token_counts[name]), int(limit)) for name, limit in limits.items()
            if token_counts[name] > limit}


def long_caption_verdict(token_counts: Mapping[str, int], limits: Mapping[str, int], policy: str
                         ) -> tuple[str, dict[str, tuple[int, int]]]:
    """``(action, over)``: the action of :func:`long_caption_action` and :func:`over_limit`'s
    detail, computed once (callers name the offending tokenizers in their messages)."""
    if policy not in LONG_CAPTION_POLICIES:
        raise ValueError(f"long caption policy must be one of {', '.join(LONG_CAPTION_POLICIES)}, got {policy!r}")
    over = over_limit(token_counts, limits)
    return (policy if over else "keep"), over


def long_caption_action(token_counts: Mapping[str, int], limits: Mapping[str, int], policy: str) -> str:
    """``"keep"`` when every count is within its limit, else the policy: ``"truncate"``, ``"skip"`` or ``"error"``.

    Pure: ``token_counts`` and ``limits`` map tokenizer names (e.g. ``tokenizer``,
    ``tokenizer_3``) to token counts and to the most tokens that encoder reads.
    """
    return long_caption_verdict(token_counts, limits, policy)[0]


def describe_over(over: Mapping[str, tuple[int, int]]) -> str:
    """``'612 tokens for tokenizer (limit 512)'``, joined with ``'; '`` for several tokenizers."""
    return "; ".join(f"{n} tokens for {name} (limit {limit})" for name, (n, limit) in over.items())


class CaptionLengthCheck:
    """Counts a caption's tokens with each tokenizer and applies a ``data.long_captions`` policy.

    The tokenizers are copied: the input stream runs on a background thread while the training
    loop encodes with the pipeline's own tokenizers, and a fast (Rust) tokenizer used from two
    threads at once fails ("Already borrowed").
    """

    def __init__(self, tokenizers: Mapping[str, Any], limits: Mapping[str, int], policy: str) -> None:
        if policy not in LONG_CAPTION_POLICIES:
            raise ValueError(f"long caption policy must be one of {', '.join(LONG_CAPTION_POLICIES)}, got {policy!r}")
        missing = [name for name in limits if tokenizers.get(name) is None]
        if missing:
            raise ValueError(f"no tokenizer for {', '.join(missing)}")
        self.limits = {name: int(limit) for name, limit in limits.items()}
        self.policy = policy
        self._tokenizers = {name: copy.deepcopy(tokenizers[name]) for name in self.limits}

    @classmethod
    def for_pipeline(cls, pipe: Any, limits: Mapping[str, int], policy: str) -> "CaptionLengthCheck":
        """The pipeline's tokenizers (attributes named as the keys of ``limits``).

        A tokenizer the pipeline was loaded without (e.g. SD3 without its T5 encoder) is not
        checked: that encoder reads nothing.
        """
        tokenizers = {name: getattr(pipe, name, None) for name in limits}
        present = {name: limit for name, limit in limits.items() if tokenizers[name] is not None}
        return cls(tokenizers, present, policy)

    def _count(self, text: str) -> dict[str, int]:
        return {name: len(tok(text, add_special_tokens=True, truncation=False)["input_ids"])
                for name, tok in self._tokenizers.items()}

    def token_counts(self, caption: str) -> dict[str, int]:
        """Tokens of ``caption`` per tokenizer, special tokens included, never truncated.

        A caption of more than :data:`CHARS_PER_TOKEN_BOUND` characters per allowed token (a
        crawl's runaway "caption" of megabytes) is counted on that many first characters
        when those alone are over a limit: tokenizing all of it would stall the input stream
        and cannot change the verdict. Otherwise every count is exact.
        """
        cut = CHARS_PER_TOKEN_BOUND * max(self.limits.values(), default=0)
        if len(caption) > cut:
            counts = self._count(caption[:cut])
            if over_limit(counts, self.limits):
                return counts
        return self._count(caption)

    def __call__(self, caption: str) -> tuple[str, dict[str, tuple[int, int]]]:
        """``(action, over)``: :func:`long_caption_verdict` of the caption's token counts."""
        return long_caption_verdict(self.token_counts(caption), self.limits, self.policy)
