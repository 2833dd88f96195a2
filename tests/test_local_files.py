"""Files named by a path someone else controls: a FIFO, a device or a directory where a
file is expected gets a clear error naming it, and nothing blocks on it."""

import json
import os

import pytest

from flywheel_assets.core.candidates import CandidateSpec, load_models
from flywheel_assets.core.local_files import check_model_directory, open_regular_file, read_config_file
from resources.platform import Adapter, LocalPlatform

CANDIDATES = {"candidates": [{"name": "small", "base_model": "demo:tiny"}]}


def test_a_candidates_file_that_is_a_fifo_fails_at_once_with_its_path(tmp_path):
    fifo = tmp_path / "candidates.json"
    os.mkfifo(fifo)  # reading it would block the code location's import forever
    with pytest.raises(ValueError, match=r"FLYWHEEL_CANDIDATES=.*candidates.json.*FIFO, not a regular file"):
        load_models(fifo)


def test_a_candidates_file_reached_through_a_link_is_read(tmp_path):
    # Kubernetes mounts a ConfigMap's files as links into a ..data folder
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "candidates.json").write_text(json.dumps(CANDIDATES))
    (tmp_path / "candidates.json").symlink_to(tmp_path / "..data" / "candidates.json")
    assert [c.name for c in load_models(tmp_path / "candidates.json").candidates] == ["small"]


def test_a_directory_or_a_huge_file_is_no_candidates_file(tmp_path):
    with pytest.raises(ValueError, match="directory, not a regular file"):
        load_models(tmp_path)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * 2048)
    with pytest.raises(OSError, match="larger than 1024 bytes"):
        read_config_file(huge, what="a candidates file", max_bytes=1024)


def test_the_drop_folder_refuses_links_that_configuration_follows(tmp_path):
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with open_regular_file(tmp_path / "link", follow_links=True) as file:
        assert file.read() == b"x"
    with pytest.raises(OSError, match="symbolic link"):
        open_regular_file(tmp_path / "link", follow_links=False)


def _model_dir(path, required="config.json"):
    path.mkdir()
    (path / required).write_text("{}")
    return path


@pytest.mark.parametrize("weights", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_model_directory_with_a_fifo_for_a_model_file_is_refused_by_name(tmp_path, weights):
    model = tmp_path / "model"
    model.mkdir()
    if weights != "config.json":
        (model / "config.json").write_text("{}")
    os.mkfifo(model / weights)
    candidate = CandidateSpec(name="local-model", base_model=str(model))
    platform = LocalPlatform(model_cache_dir=str(tmp_path / "cache"), adapters_dir=str(tmp_path / "adapters"))
    with pytest.raises(
        FileNotFoundError, match=rf"local-model.*{weights}.*FIFO, not a regular file.*download the weights"
    ):
        platform.base_model_dir(candidate, [])


def test_a_model_directory_must_be_a_directory_with_its_config(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="file is not a directory"):
        check_model_directory(tmp_path / "file")
    with pytest.raises(OSError, match="has no config.json"):
        check_model_directory(tmp_path)
    assert check_model_directory(_model_dir(tmp_path / "ok")) == tmp_path / "ok"


def test_serving_a_trained_adapter_checks_the_adapter_directory(tmp_path):
    base = _model_dir(tmp_path / "base")
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    os.mkfifo(adapter_dir / "adapter_config.json")
    adapter = Adapter(trained=True, base_model_dir=str(base), adapter_dir=str(adapter_dir))
    platform = LocalPlatform(model_cache_dir=str(tmp_path / "cache"), adapters_dir=str(tmp_path / "adapters"))
    with pytest.raises(OSError, match="adapter_config.json.*FIFO"):
        with platform.serving(CandidateSpec(name="c"), [], adapter):
            pass
