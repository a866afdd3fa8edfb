"""The data layer: ``ltray prepare`` writes Parquet shards + a manifest; the reader streams them.

Modules, one idea each: fs (fsspec URLs, credentials kept out of messages), profiles (long-tail
counts), sources / listed / trees / items / synthetic (what to write), writer (shard format),
tasks (one shard, in a worker), outdir (what OUT holds), prepare (parallel, resumable
orchestration), manifest (the index, written last), partition / order (which rows a rank and
worker read, and in what order), decode, transforms, reader (the IterableDataset and loader).
"""

from ltray.data.manifest import Manifest, ShardInfo, SplitInfo, read_manifest
from ltray.data.order import epoch_batches, plan_worker
from ltray.data.prepare import PrepareOptions, PrepareResult, prepare, prepare_from
from ltray.data.profiles import PROFILES, long_tail_counts, shot_groups
from ltray.data.reader import StreamingImageDataset, make_loader
from ltray.data.transforms import AUGMENTS, build_transform
from ltray.data.writer import ShardLayout

__all__ = [
    "AUGMENTS",
    "PROFILES",
    "Manifest",
    "PrepareOptions",
    "PrepareResult",
    "ShardInfo",
    "ShardLayout",
    "SplitInfo",
    "StreamingImageDataset",
    "build_transform",
    "epoch_batches",
    "long_tail_counts",
    "make_loader",
    "plan_worker",
    "prepare",
    "prepare_from",
    "read_manifest",
    "shot_groups",
]
