"""Dataset stores: where curated data and split files live.

`DatasetStore` is the interface the assets use; `LocalDatasetStore` is the embedded
default (a folder, atomic writes). The NeMo Data Store client implements the same
interface. `ParquetIOManager` stores asset values (polars DataFrames, or LazyFrames streamed to the
file) as Parquet files under the same root and hands them to downstream assets as lazy
polars scans.

Temporary files and pin folders carry their owner's pid in their name (`owner_tag`): before
an I/O manager writes, it removes the ones a killed process left beside the file it writes
(and the pins under its folder), never a live process's (`sweep_leftovers`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import typing
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field
from upath import UPath

from flywheel_assets.core.atomic import atomic_path, atomic_write_bytes, owner_tag, sweep_leftovers


class DatasetStore(dg.ConfigurableResource):
    """Holds split files (chat-format JSONL) for training and evaluation backends."""

    @abstractmethod
    def write_file(self, relpath: str, data: bytes) -> str:
        """Store `data` at `relpath`; return a URI a backend can read it from."""

    @abstractmethod
    def read_file(self, relpath: str) -> bytes: ...


class LocalDatasetStore(DatasetStore):
    root: str = Field(description="Folder holding datasets, split files and the landing area.")

    def path(self, relpath: str) -> Path:
        root = Path(self.root).resolve()
        target = (root / relpath).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"{relpath!r} escapes the dataset store root {root}")
        return target

    def write_file(self, relpath: str, data: bytes) -> str:
        target = self.path(relpath)
        atomic_write_bytes(target, data)
        return target.as_uri()

    def read_file(self, relpath: str) -> bytes:
        return self.path(relpath).read_bytes()


# rows per Parquet row group: a reader holds a whole group at once, and a group of 10,000
# traces (a few KB each) keeps a streaming scan of a large partition to tens of MB
ROW_GROUP_ROWS = 10_000


def write_parquet_atomically(obj: pl.DataFrame | pl.LazyFrame, path: Path) -> None:
    """Write a frame atomically; a lazy one is streamed, never held whole."""
    with atomic_path(path) as tmp:
        if isinstance(obj, pl.LazyFrame):
            obj.sink_parquet(tmp, row_group_size=ROW_GROUP_ROWS)
        else:
            obj.write_parquet(tmp, row_group_size=ROW_GROUP_ROWS)


def sweep_before_write(context: dg.OutputContext, folders: Iterable[Path]) -> None:
    """Remove what killed writers left in `folders` (temporary files, pins), and log it."""
    for folder in folders:
        for leftover in sweep_leftovers(folder):
            context.log.info(f"removed {leftover.path} ({leftover.size} bytes), left by a killed process")


def _wants_dict(context: dg.InputContext) -> bool:
    return typing.get_origin(context.dagster_type.typing_type) is dict


def partition_file(
    base: Path, asset_key: Sequence[str], partition_key: str | dg.MultiPartitionKey, extension: str = ".parquet"
) -> Path:
    """Where `ParquetIOManager` stores one partition of an asset, and `StoredAssets` finds
    it: `<base>/<asset key path>/<partition key><extension>`; a multi-dimensional key is
    one folder level per dimension, ordered by dimension name (`<day>/<workload>.parquet`),
    as Dagster's `UPathIOManager` lays it out."""
    parts = (
        [partition_key.keys_by_dimension[d] for d in sorted(partition_key.keys_by_dimension)]
        if isinstance(partition_key, dg.MultiPartitionKey)
        else [partition_key]
    )
    return base.joinpath(*asset_key, *parts[:-1], f"{parts[-1]}{extension}")


class _PolarsParquetUPathIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def _get_paths_for_partitions(self, context: dg.InputContext | dg.OutputContext) -> dict[str, UPath]:
        if not context.has_asset_partitions:
            return super()._get_paths_for_partitions(context)  # raises Dagster's own error
        # the layout is `partition_file`'s, which `StoredAssets` reads by
        return {
            key: partition_file(self._base_path, context.asset_key.path, key, self.extension)
            for key in context.asset_partition_keys
        }

    def _load_partitions(self, context: dg.InputContext):
        # UPathIOManager hands over a bare value when the mapping yields one partition (one
        # day, one candidate); an input annotated as a dict always gets a dict
        loaded = super()._load_partitions(context)
        if _wants_dict(context) and not isinstance(loaded, dict):
            (key,) = context.asset_partition_keys
            return {key: loaded}
        return loaded

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        """A frame, or for a run over a range of partitions (`BackfillPolicy.single_run`)
        a dict of one frame per partition key, each written to that partition's file."""
        if not isinstance(obj, Mapping):
            return super().handle_output(context, obj)
        paths = self._get_paths_for_partitions(context)
        if set(obj) != {str(key) for key in paths}:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: the frames are keyed by {sorted(obj)}, "
                f"but the run materializes the partitions {sorted(str(k) for k in paths)}"
            )
        for key, path in paths.items():
            self.make_directory(path.parent)
            self.dump_to_path(context, obj[str(key)], path)

    def dump_to_path(self, context: dg.OutputContext, obj: pl.DataFrame | pl.LazyFrame, path: UPath) -> None:
        # temporary files lie beside their file, pins (`StoredAssets.pinned`) in the base folder
        sweep_before_write(context, {Path(str(self._base_path)), Path(str(path.parent))})
        write_parquet_atomically(obj, Path(str(path)))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pl.LazyFrame:
        # scans are lazy: check now, so `allow_missing_partitions` can skip absent days
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: materialize the upstream partition")
        return pl.scan_parquet(str(path))


class _JsonUPathIOManager(dg.UPathIOManager):
    extension = ".json"

    def dump_to_path(self, context: dg.OutputContext, obj: dict, path: UPath) -> None:
        sweep_before_write(context, [Path(str(path.parent))])
        atomic_write_bytes(Path(str(path)), json.dumps(obj, indent=2, sort_keys=True).encode())

    def load_from_path(self, context: dg.InputContext, path: UPath) -> dict:
        return json.loads(Path(str(path)).read_text())


class JsonIOManager(dg.ConfigurableIOManagerFactory):
    """Small asset values (dicts, e.g. an adapter's manifest) as JSON files, written atomically."""

    base_dir: str = Field(description="Folder for asset values (one file per partition).")

    def create_io_manager(self, context) -> dg.UPathIOManager:
        return _JsonUPathIOManager(base_path=UPath(self.base_dir))


class StoredAssets(dg.ConfigurableResource):
    """Reads partitions that `ParquetIOManager` stored, for an asset that picks its own
    partitions (e.g. only the days of a look-back window that exist) instead of loading
    every partition a mapping names. Same folder, same layout as the I/O manager."""

    base_dir: str = Field(description="The ParquetIOManager's base_dir.")

    def path(self, asset: str, partition_key: str | dg.MultiPartitionKey) -> Path:
        path = partition_file(Path(self.base_dir), [asset], partition_key)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: materialize {asset} [{partition_key}]")
        return path

    def scan(self, asset: str, partition_key: str | dg.MultiPartitionKey) -> pl.LazyFrame:
        return pl.scan_parquet(self.path(asset, partition_key))

    @contextlib.contextmanager
    def pinned(self, asset: str, partition_keys: list[str | dg.MultiPartitionKey]) -> Iterator[list[pl.LazyFrame]]:
        """Scans of stored partitions that stay as they were while the block runs, even if
        a partition is materialized again meanwhile (the I/O manager renames a new file into
        place): each file is hard-linked, or copied where it can't be, into a private folder
        that is removed afterwards. For a lazy result that is read more than once."""
        if not partition_keys:
            yield []
            return
        folder = Path(tempfile.mkdtemp(prefix=f".pinned-{asset}-", suffix=owner_tag(), dir=self.base_dir))
        try:
            frames = []
            for number, key in enumerate(partition_keys):
                stored, pin = self.path(asset, key), folder / f"{number}.parquet"
                try:
                    os.link(stored, pin)
                except OSError:
                    shutil.copyfile(stored, pin)
                frames.append(pl.scan_parquet(pin))
            yield frames
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Asset values as Parquet files, written atomically, loaded as `pl.LazyFrame`s."""

    base_dir: str = Field(description="Folder for asset values (one file per partition).")

    def create_io_manager(self, context) -> dg.UPathIOManager:
        return _PolarsParquetUPathIOManager(base_path=UPath(self.base_dir))
