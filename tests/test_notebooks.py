"""The notebooks in experiments/notebooks, executed top to bottom with small settings, as a user runs them."""

import os

import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "notebooks")
EVALUATE_POLICY = os.path.join(NOTEBOOK_DIR, "evaluate_policy.ipynb")
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
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def test_evaluate_policy_notebook_shows_table_chart_and_video():
    outputs = execute(EVALUATE_POLICY, SMALL_EVALUATION)
    assert not [output for output in outputs if output.output_type == "error"]
    data = [output.data for output in outputs if "data" in output]
    markdown = "".join(item.get("text/markdown", "") for item in data)
    assert "| reach-v3 | 1.00 |" in markdown  # the scripted expert solves reach every time
    assert any("image/png" in item for item in data)
    assert any("<video" in item.get("text/html", "") and "base64," in item["text/html"] for item in data)


def test_notebooks_are_committed_without_outputs():
    notebook = nbformat.read(EVALUATE_POLICY, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells[0] is parameters_cell(notebook)
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells)
