from pathlib import Path

from flywheel_assets.core.cpus import (
    cgroup_cpu_quota,
    choose_thread_count,
    own_cgroups,
    parse_cfs_quota,
    parse_cpu_max,
    self_and_ancestors,
)


def test_parse_cpu_max():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("150000 100000") == 1.5


def test_parse_cfs_quota():
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("50000\n", "100000\n") == 0.5


def test_own_cgroups_of_v2_v1_and_hybrid_hosts():
    assert own_cgroups("0::/user.slice/app.scope\n") == ("/user.slice/app.scope", None)
    assert own_cgroups("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n") == (None, "/docker/abc")
    assert own_cgroups("1:cpu:/job\n0::/\n") == ("/", "/job")


def test_self_and_ancestors():
    root = Path("/sys/fs/cgroup")
    assert self_and_ancestors(root, "/") == [root]
    assert self_and_ancestors(root, "/a/b") == [root, root / "a", root / "a" / "b"]


def test_choose_thread_count():
    assert choose_thread_count(8, None) == 8
    assert choose_thread_count(8, 2.0) == 2
    assert choose_thread_count(8, 2.5) == 2  # a part of a core holds the other threads up
    assert choose_thread_count(2, 4.0) == 2  # the affinity mask is the tighter limit
    assert choose_thread_count(8, 0.5) == 1


def test_cgroup_v2_quota_is_the_smallest_of_the_cgroup_and_its_ancestors(tmp_path):
    (tmp_path / "outer" / "inner").mkdir(parents=True)
    (tmp_path / "outer" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "outer" / "inner" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/outer/inner\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 3.0
    (tmp_path / "outer" / "inner" / "cpu.max").write_text("100000 100000\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 1.0


def test_cgroup_v1_quota_and_none(tmp_path):
    job = tmp_path / "cpu" / "job"
    job.mkdir(parents=True)
    (job / "cpu.cfs_quota_us").write_text("200000\n")
    (job / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("2:cpu,cpuacct:/job\n0::/\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 2.0
    (job / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path, proc) is None
    assert cgroup_cpu_quota(tmp_path, tmp_path / "no-such-file") is None


def test_the_landing_uses_every_usable_cpu_and_no_more(monkeypatch):
    """A 16-CPU pod gets 16 validation workers (no fixed cap); a 2-CPU limit on a 64-core
    node gets 2, as torch's threads do."""
    from flywheel_assets.core import cpus
    from resources.traces import FileTraceSource

    source = FileTraceSource(traces_dir="/nonexistent", landing_dir="/nonexistent")
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 16.0)
    assert cpus.usable_cpus() == 16
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 2.5)
    assert cpus.usable_cpus() == 2
    assert source._landing_options()["workers"] == 2
    assert FileTraceSource(traces_dir="/x", landing_dir="/y", validation_workers=3)._landing_options()["workers"] == 3
