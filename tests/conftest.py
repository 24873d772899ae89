"""Shared test setup: quiet, CPU-only TensorFlow and 8 forced host devices for sharding tests."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

import octo_like  # noqa: E402,F401  (quiet, deterministic TensorFlow settings)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir holding both configs of the synthetic RLDS dataset, built once per session."""
    from data_pipelines.synthetic.builder import build

    data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    build(data_dir, ["default", "no_wrist"])
    return data_dir
