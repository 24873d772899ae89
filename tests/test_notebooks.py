"""The notebooks in experiments/notebooks, executed top to bottom with small settings, as a user runs them."""

import os

import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "notebooks")
EVALUATE_POLICY = os.path.join(NOTEBOOK_DIR, "evaluate_policy.ipynb")
INFERENCE = os.path.join(NOTEBOOK_DIR, "inference.ipynb")
FINETUNE = os.path.join(NOTEBOOK_DIR, "finetune.ipynb")
NOTEBOOKS = (EVALUATE_POLICY, INFERENCE, FINETUNE)
# A committed release (no language, a 32x32 primary camera, 4-d actions): small enough to run here.
SMALL_RELEASE = "tests/fixtures/release_a34613f"
SMALL_EVALUATION = """\
POLICY = "scripted"
CHECKPOINT = None
TASKS = "reach"
EPISODES = 2
VIDEOS_PER_TASK = 1
IMAGE_SIZE = 64
WORKERS = 1
SEED = 0
"""


def parameters_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    (cell,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    return cell


def execute(path: str, parameters: str) -> list[dict]:
    """Runs the notebook with its `parameters` cell replaced (in the notebook's directory); its outputs."""
    notebook = nbformat.read(path, as_version=4)
    parameters_cell(notebook).source = parameters
    # kernel "python3" with a "python" argv runs this interpreter (jupyter_client swaps in sys.executable),
    # so the kernel sees this venv's packages. A cell error raises CellExecutionError here.
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path)}}
    ).execute()
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def test_evaluate_policy_notebook_shows_table_chart_and_video():
    outputs = execute(EVALUATE_POLICY, SMALL_EVALUATION)
    assert not [output for output in outputs if output.output_type == "error"]
    data = [output.data for output in outputs if "data" in output]
    markdown = "".join(item.get("text/markdown", "") for item in data)
    assert "| reach-v3 | 1.00 |" in markdown  # the scripted expert solves reach every time
    assert any("image/png" in item for item in data)
    assert any("<video" in item.get("text/html", "") and "base64," in item["text/html"] for item in data)


def test_inference_notebook_predicts_a_chunk_plots_it_and_shows_an_episode():
    outputs = execute(
        INFERENCE,
        f"""\
CHECKPOINT = "{SMALL_RELEASE}"
STEP = None
TASK = "reach"
INSTRUCTION = None
SEED = 0
MAX_EPISODE_STEPS = 12
""",
    )
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "cameras {'primary': (32, 32)}, window 2, chunk 3 x 4, proprio from the environment's 'proprio'" in text
    assert "action chunk (3, 4)" in text
    data = [output.data for output in outputs if "data" in output]
    assert any("image/png" in item for item in data)
    assert any("**reach-v3**: failure after 12 steps" in item.get("text/markdown", "") for item in data)
    assert any("<video" in item.get("text/html", "") and "base64," in item["text/html"] for item in data)


def test_finetune_notebook_collects_finetunes_evaluates_and_plots(tmp_path):
    outputs = execute(
        FINETUNE,
        f"""\
PRETRAINED = "{SMALL_RELEASE}"
TASK = "door-lock"
DEMOS = 2
IMAGE_SIZE = 32
CONFIG = "experiments/configs/metaworld_mt10.py:wrist=off"
STEPS = 2
MODE = "full"
EXTRA_FLAGS = ["--config.dataset.batch_size=8", "--config.dataset.shuffle_buffer_size=10", "--config.save_interval=2",
               "--config.eval_interval=2", "--config.log_interval=1", "--config.eval_batches=1",
               "--config.model.transformer.num_layers=1"]
EVAL_EPISODES = 1
MAX_EPISODE_STEPS = 8
WORKERS = 1
DATA_DIR = "{tmp_path / "data"}"
RUN_DIR = "{tmp_path / "finetuned"}"
""",
    )
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert '"episodes": 2' in text  # the collection's summary line
    assert "wrote " in text and "checkpoint step 2, verified" in text  # the finetuning run's last line
    assert sorted(path.name for path in (tmp_path / "finetuned").iterdir() if path.name.isdigit()) == ["2"]
    markdown = "".join(output.data.get("text/markdown", "") for output in outputs if "data" in output)
    assert "**zero-shot release**" in markdown and "**finetuned**" in markdown and "| door-lock-v3 |" in markdown
    assert any("image/png" in output.data for output in outputs if "data" in output)


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code_cells[0] is parameters_cell(notebook), path
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells), path
