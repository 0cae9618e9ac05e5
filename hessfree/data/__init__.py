"""Datasets: validated loading, per-rank sharding and the curvature mini-batch schedule.

``load_dataset(name, ...)`` is the single entry point: it returns a rank's validated
shard of ``digits``, ``mnist``, ``fashion-mnist``, ``synthetic``, ``timit-like`` or an
``npz`` archive. ``fetch_dataset`` downloads the MNIST-family IDX files with checksums.
"""

from hessfree.data.dataset import Dataset
from hessfree.data.digits import load_digits
from hessfree.data.fetch import FetchAction, FetchedFile, FetchReport, fetch_dataset
from hessfree.data.idx import IdxHeader, read_idx_header, read_idx_rows
from hessfree.data.loader import DatasetName, check_fits, dataset_info, load_dataset, open_source
from hessfree.data.sharding import (
    EvalSplit,
    ShardInfo,
    ShardMode,
    check_shardable,
    shard_indices,
    shard_range,
    strided_range,
)
from hessfree.data.source import DatasetInfo
from hessfree.data.synthetic import TeacherConfig

__all__ = [
    "Dataset",
    "DatasetInfo",
    "DatasetName",
    "EvalSplit",
    "FetchAction",
    "FetchReport",
    "FetchedFile",
    "IdxHeader",
    "ShardInfo",
    "ShardMode",
    "TeacherConfig",
    "check_fits",
    "check_shardable",
    "dataset_info",
    "fetch_dataset",
    "load_dataset",
    "load_digits",
    "open_source",
    "read_idx_header",
    "read_idx_rows",
    "shard_indices",
    "shard_range",
    "strided_range",
]
