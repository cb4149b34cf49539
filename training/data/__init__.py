"""Data for lorabench: shard lists, sample decoding, the resumable input stream, synthetic data.

Modules (import the one you need; importing this package pulls in nothing heavy):

- ``shards``: ``list_shards`` (expand a ``data.shards`` spec), ``shard_assignment``,
  ``epoch_plan``/``EpochPlan`` (equal samples per worker and epoch).
- ``index``: ``count_samples``, ``shard_sample_counts`` (per-shard sample counts, cached),
  ``scan_shards``/``ShardScan`` (the same, setting bad shards aside by reason).
- ``decode``: ``BadSample``, ``decode_video``, ``decode_image``, ``caption_of``, ``media_of``.
- ``captions``: ``data.long_captions`` (``long_caption_action``, ``CaptionLengthCheck``).
- ``errors``: ``DataError``, ``ShardError``, ``DataSpecError``, ``BAD_SHARD_REASONS``, ``listed``.
- ``reader``: ``raw_samples`` (one shard's undecoded samples, every way it breaks named).
- ``skips``: ``SkipCounter`` (samples seen and skipped per reason, each once per run).
- ``pipeline``: ``ShardStream`` (balanced, resumable epochs), ``collate``, ``batches``; re-exports
  ``SkipCounter``, ``DataError`` and ``ShardError``.
- ``prefetch``: ``Prefetcher`` (decodes the next batches on a thread).
- ``synthetic``: ``make_data``, ``make_bad_shard`` and the ``lorabench make-data`` CLI.
"""
