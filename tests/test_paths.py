"""diffpali.paths: the cache root and the run behind a ``ckpt=`` path, each found one way."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffpali.files import UnreadableFileError
from diffpali.paths import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_DIR,
    CACHE_ENV,
    JOB_FILE,
    LAMBDA_HISTORY_FILE,
    adapter_dir_of,
    cache_root,
    find_in_run,
    run_dirs_of,
)


def test_the_cache_root_is_the_config_then_the_environment_then_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert cache_root("~/x") == Path.home() / "x"
    assert cache_root(None) == tmp_path / "env"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "diffpali"


@pytest.fixture
def run(tmp_path) -> Path:
    """A train.py run directory: its job record, lambda history and adapter."""
    run = tmp_path / "run"
    (run / ADAPTER_DIR).mkdir(parents=True)
    (run / ADAPTER_DIR / ADAPTER_CONFIG_FILE).write_text("{}")
    (run / JOB_FILE).write_text("{}")
    (run / LAMBDA_HISTORY_FILE).write_text("")
    return run


def test_a_run_is_found_from_its_directory_or_its_adapter(run):
    for ckpt in (run, run / ADAPTER_DIR):
        assert find_in_run(str(ckpt), JOB_FILE) == run / JOB_FILE
        assert find_in_run(str(ckpt), LAMBDA_HISTORY_FILE) == run / LAMBDA_HISTORY_FILE
        assert adapter_dir_of(str(ckpt)) == run / ADAPTER_DIR
    assert run_dirs_of(str(run / ADAPTER_DIR)) == (run / ADAPTER_DIR, run)
    assert find_in_run(str(run), "metrics.json") is None


def test_base_names_no_run_and_no_adapter():
    assert run_dirs_of("base") == () and find_in_run("base", JOB_FILE) is None and adapter_dir_of("base") is None


def test_a_directory_without_an_adapter_is_named_with_what_to_give(tmp_path):
    with pytest.raises(UnreadableFileError, match="Give ckpt= a train.py run directory, an adapter directory or base"):
        adapter_dir_of(str(tmp_path))
