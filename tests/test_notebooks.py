"""The notebooks run top to bottom (their cells assert what they show)."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

#: Environment variables under which NumPyro's ``MCMC`` turns its progress bars off.
_NO_PROGRESS_BARS = ("CI", "PYTEST_XDIST_WORKER")
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory, monkeypatch_module):
    """A kernelspec that runs this very interpreter (the one mscpk is installed in)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "mscpk-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "mscpk-test", "language": "python"})
    )
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    # The kernel runs in notebooks/; make the package importable from a source checkout too.
    repo = str(Path(__file__).resolve().parent.parent)
    monkeypatch_module.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    )
    return "mscpk-test"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, kernel_name):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name=kernel_name, resources={"metadata": {"path": str(path.parent)}}
    )
    # The kernel gets a user's environment: NumPyro turns its progress bars off under
    # pytest-xdist and CI, and without them it compiles its sampling loop once per chain
    # (the chain's start is a constant of that program); with them one per-iteration
    # program serves every chain, as notebook 05 says and as a user's session runs it.
    client.execute(env={k: v for k, v in os.environ.items() if k not in _NO_PROGRESS_BARS})
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
