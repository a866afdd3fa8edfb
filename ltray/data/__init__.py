"""The data layer, in two wings with the shared format between them.

- ``prepare/``: sources -> image references -> shards (``ltray prepare``): what to write
  (sources, list_sources, class_trees, synthetic, image_refs), one shard in a worker process
  (shard_task), what OUT may hold (out_folder), and the parallel, resumable run (orchestrator).
- ``stream/``: which rows a rank and loader worker read and in what order (partition, order),
  augmentation of whole batches on whatever device holds them (transforms) and the
  IterableDataset (dataset).
- Between them: the manifest (the index, written last), the shard format (shards: writer and
  row-group reader), image decoding (decode; in batches onto a GPU: gpu_decode) and the
  long-tail profiles (profiles).
"""

from ltray.data.manifest import Manifest, ShardInfo, SplitInfo, read_manifest
from ltray.data.profiles import GROUPS, PROFILES, long_tail_counts, shot_groups
from ltray.data.shards import ShardLayout

__all__ = [
    "GROUPS",
    "PROFILES",
    "Manifest",
    "ShardInfo",
    "ShardLayout",
    "SplitInfo",
    "long_tail_counts",
    "read_manifest",
    "shot_groups",
]
