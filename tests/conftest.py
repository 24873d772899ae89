"""Shared test setup: quiet, CPU-only TensorFlow, 8 forced host devices for sharding tests, and one
persistent JAX compilation cache for the session."""

import atexit
import os
import shutil
import tempfile

# The tests' programs run a few steps each: at LLVM's optimization level 0 they compile in about
# half the time and run about twice as slowly, which takes a quarter off the CPU time of the
# heaviest test files (724 s -> 542 s). Their float32 results agree with the default level's to a
# few units in the last place, not bit for bit.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_XLA_FLAGS}")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The end-to-end tests start train.py / evaluate.py as subprocesses (inheriting this environment)
# that compile the same tiny programs again and again; a cache shared by them, fresh for each
# session so that no test depends on an earlier run, compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="octo_like_jax_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

import octo_like  # noqa: E402,F401  (quiet, deterministic TensorFlow settings)

# The files of long end-to-end runs (training, evaluation, benchmarks, notebooks) go first:
# scripts/test.sh hands whole files to two workers in collection order, and a long file started
# last would run alone at the end.
LONG_FILES = (  # longest first, as measured on 2 cores
    "test_train_scripts.py",
    "test_distributed.py",
    "test_vla.py",
    "test_vla_kinds.py",
    "test_bench_model.py",
    "test_notebooks.py",
    "test_run_guards.py",
    "test_text_aware.py",
    "test_policy.py",
    "test_rollout_eval.py",
)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: the order within stays


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir holding both configs of the synthetic RLDS dataset, built once per session."""
    from data_pipelines.synthetic.builder import build

    data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    build(data_dir, ["default", "no_wrist"])
    return data_dir


@pytest.fixture(scope="session")
def pretrained_run(synthetic_data_dir, tmp_path_factory):
    """One tiny run of 40 steps (trained in this process), shared by the finetuning, resume and
    release tests: the release that finetuning starts from, and the reference that an interrupted
    and resumed run of the same config must equal. Tests copy it before changing it."""
    from trained_runs import pretraining, train

    run_dir = tmp_path_factory.mktemp("runs") / "pretrained"
    train(pretraining(synthetic_data_dir, run_dir))
    return run_dir
