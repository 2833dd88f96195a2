"""The Parquet I/O manager: atomic files, lazy scans, and dict inputs even for one partition."""

import dagster as dg
import polars as pl

from resources.datasets import ParquetIOManager

days = dg.StaticPartitionsDefinition(["d1", "d2"])
workloads = dg.StaticPartitionsDefinition(["w1"])
by_day = dg.MultiPartitionsDefinition({"day": days, "workload": workloads})
BY_WORKLOAD = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="workload")


@dg.asset(partitions_def=by_day)
def daily(context) -> pl.DataFrame:
    return pl.DataFrame({"day": [context.partition_key.keys_by_dimension["day"]]})


@dg.asset(
    partitions_def=workloads,
    ins={"daily": dg.AssetIn(partition_mapping=BY_WORKLOAD, metadata={"allow_missing_partitions": True})},
)
def summary(daily: dict[str, pl.LazyFrame]) -> pl.DataFrame:
    return pl.DataFrame({"days": [sorted(k.keys_by_dimension["day"] for k in daily)]})


one_day = dg.StaticPartitionsDefinition(["d1"])


@dg.asset(partitions_def=dg.MultiPartitionsDefinition({"day": one_day, "workload": workloads}))
def daily_once(context) -> pl.DataFrame:
    return pl.DataFrame({"day": [context.partition_key.keys_by_dimension["day"]]})


@dg.asset(partitions_def=workloads, ins={"daily_once": dg.AssetIn(partition_mapping=BY_WORKLOAD)})
def summary_once(daily_once: dict[str, pl.LazyFrame]) -> pl.DataFrame:
    return pl.DataFrame({"days": [sorted(k.keys_by_dimension["day"] for k in daily_once)]})


def test_a_single_upstream_partition_still_arrives_as_a_dict(tmp_path):
    # e.g. a leaderboard when exactly one candidate is configured
    resources = {"io_manager": ParquetIOManager(base_dir=str(tmp_path))}
    assets = [daily_once, summary_once]
    with dg.instance_for_test() as instance:
        dg.materialize(
            assets,
            selection=["daily_once"],
            partition_key=dg.MultiPartitionKey({"day": "d1", "workload": "w1"}),
            instance=instance,
            resources=resources,
        )
        result = dg.materialize(
            assets, selection=["summary_once"], partition_key="w1", instance=instance, resources=resources
        )
        assert result.output_for_node("summary_once")["days"][0].to_list() == ["d1"]


def test_missing_partitions_are_left_out_of_the_dict(tmp_path):
    resources = {"io_manager": ParquetIOManager(base_dir=str(tmp_path))}
    with dg.instance_for_test() as instance:
        dg.materialize(
            [daily, summary],
            selection=["daily"],
            partition_key=dg.MultiPartitionKey({"day": "d2", "workload": "w1"}),
            instance=instance,
            resources=resources,
        )
        result = dg.materialize(
            [daily, summary], selection=["summary"], partition_key="w1", instance=instance, resources=resources
        )
        assert result.output_for_node("summary")["days"][0].to_list() == ["d2"]
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


@dg.asset
def streamed() -> pl.LazyFrame:
    return pl.LazyFrame({"n": list(range(25_000))}).with_columns(square=pl.col("n") ** 2)


@dg.asset
def broken_plan() -> pl.LazyFrame:
    # fails only when executed, i.e. while the I/O manager streams it to the file
    return pl.LazyFrame({"n": ["1", "x"]}).select(pl.col("n").cast(pl.Int64, strict=True))


def test_a_lazy_value_is_streamed_to_its_file_and_loads_back(tmp_path):
    result = dg.materialize([streamed], resources={"io_manager": ParquetIOManager(base_dir=str(tmp_path))})
    assert result.success
    stored = pl.read_parquet(tmp_path / "streamed.parquet")
    assert stored.height == 25_000 and stored["square"][-1] == 24_999**2


def test_a_lazy_value_that_fails_while_streaming_leaves_no_file(tmp_path):
    result = dg.materialize(
        [broken_plan], resources={"io_manager": ParquetIOManager(base_dir=str(tmp_path))}, raise_on_error=False
    )
    assert not result.success
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob(".*"))


def test_pinned_partitions_keep_their_content_while_the_asset_is_stored_again(tmp_path):
    # workload_dataset reads raw_traces lazily twice (decide, then stream); a re-ingested
    # partition renamed into place in between must not change what it reads
    from resources.datasets import StoredAssets, write_parquet_atomically

    stored = tmp_path / "raw_traces" / "2025-01-01" / "w.parquet"
    write_parquet_atomically(pl.DataFrame({"n": [1, 2]}), stored)
    assets = StoredAssets(base_dir=str(tmp_path))
    key = dg.MultiPartitionKey({"day": "2025-01-01", "workload": "w"})
    with assets.pinned("raw_traces", [key]) as (frame,):
        write_parquet_atomically(pl.DataFrame({"n": [7, 8, 9]}), stored)
        assert frame.collect()["n"].to_list() == [1, 2]
        assert assets.scan("raw_traces", key).collect()["n"].to_list() == [7, 8, 9]
    assert not list(tmp_path.glob(".pinned-*"))  # the pins are gone afterwards


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["support.router"]))
def single(context) -> pl.DataFrame:
    return pl.DataFrame({"key": [context.partition_key]})


def test_stored_assets_finds_each_partition_where_the_io_manager_wrote_it(tmp_path):
    from resources.datasets import StoredAssets

    resources = {"io_manager": ParquetIOManager(base_dir=str(tmp_path))}
    multi_key = dg.MultiPartitionKey({"workload": "w1", "day": "d2"})
    assert dg.materialize([daily], partition_key=multi_key, resources=resources).success
    assert dg.materialize([single], partition_key="support.router", resources=resources).success
    stored = StoredAssets(base_dir=str(tmp_path))
    assert stored.path("daily", multi_key) == tmp_path / "daily" / "d2" / "w1.parquet"
    assert stored.scan("daily", multi_key).collect()["day"].to_list() == ["d2"]
    assert stored.path("single", "support.router") == tmp_path / "single" / "support.router.parquet"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet")) == [
        "daily/d2/w1.parquet",
        "single/support.router.parquet",
    ]
