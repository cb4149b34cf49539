"""A content-addressed cache of VAE latents and text embeddings (``lorabench precompute``).

Training re-encodes every sample every epoch with the VAE and the text encoders although
neither is trained; the cache computes that once. A cache folder holds one tar shard per
source shard, sample for sample in the same order (bad samples as records of why they were
skipped), so training from it keeps the shard split, the shuffle, the epoch plan, exact resume
and the skip counts of on-the-fly training; and an ``index.json`` that records what the
latents were computed from and with (:class:`~.settings.CacheSettings`).

Every cached sample's key hashes its source bytes (media and caption members) together with
the settings' digest; the index's settings are compared field by field with the run's, so a
cache made with another VAE, text encoder, dtype, size, frame count, fps, crop rule or text
length is refused naming the field, never reused silently.

- :mod:`.settings`: what a cache depends on, and the weight digests;
- :mod:`.store`: the on-disk format (index, shards, members), reading and checking;
- :mod:`.encode`: encoding source shards into cache shards (the VAE and text encoders);
- :mod:`.source`: what training reads instead of media (no encoder is ever constructed).
"""

from .settings import CACHE_FORMAT_VERSION, CacheSettings
from .store import CacheError

__all__ = ["CACHE_FORMAT_VERSION", "CacheError", "CacheSettings"]
