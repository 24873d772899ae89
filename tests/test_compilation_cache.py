"""The persistent compilation cache every CLI turns on (octo_like/utils/compilation_cache.py)."""

import os

import jax
import pytest

from octo_like.utils.compilation_cache import VARIABLE, cache_dir, default_cache_dir, enable_compilation_cache


@pytest.fixture
def restored_cache_settings(monkeypatch):
    """The test session's cache (conftest) back in place after the test, in JAX and the environment."""
    before = jax.config.jax_compilation_cache_dir
    # Recorded by monkeypatch now, so that its teardown restores the session's value whatever the
    # test (or enable_compilation_cache) does to the variable.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.environ.get("JAX_COMPILATION_CACHE_DIR", ""))
    monkeypatch.delenv(VARIABLE, raising=False)
    yield monkeypatch
    jax.config.update("jax_compilation_cache_dir", before)


def test_the_cache_directory_follows_flag_then_variables_then_the_users_cache(restored_cache_settings, tmp_path):
    monkeypatch = restored_cache_settings
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == default_cache_dir() == str(tmp_path / "xdg" / "octo_like" / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_env"))
    assert cache_dir() == str(tmp_path / "jax_env")
    monkeypatch.setenv(VARIABLE, str(tmp_path / "ours"))
    assert cache_dir() == str(tmp_path / "ours")
    assert cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    monkeypatch.setenv(VARIABLE, "off")
    assert cache_dir() is None and cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")


def test_enabling_points_jax_and_child_processes_at_it_and_off_turns_it_off(restored_cache_settings, tmp_path):
    directory = enable_compilation_cache(str(tmp_path / "cache"))
    assert directory == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    assert jax.config.jax_compilation_cache_dir == directory
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == directory  # what spawned evaluation workers read
    assert enable_compilation_cache("off") is None
    assert jax.config.jax_compilation_cache_dir is None and "JAX_COMPILATION_CACHE_DIR" not in os.environ
