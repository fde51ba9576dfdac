"""notebooks/quickstart.ipynb runs top to bottom on the shipped tiny model (executed with nbclient)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from data.metaworld.record import record

REPO = Path(__file__).resolve().parent.parent
SHIPPED_TINY = REPO / "pretrained" / "metaworld_push" / "tiny"


@pytest.fixture(scope="module")
def shipped_shape_dataset(tmp_path_factory, make_record_config):
    """One short episode with the shipped model's views and image size."""
    from worldmodel.model import VideoDiT

    cfg = VideoDiT.load_config(SHIPPED_TINY)["config"]
    root = tmp_path_factory.mktemp("datasets") / "quickstart"
    record_cfg = make_record_config(root, episodes=1)
    record_cfg.env.cameras = [k.removeprefix("observation.images.") for k in cfg["camera_keys"]]
    record_cfg.env.image_size = cfg["image_size"]
    record(record_cfg)
    return root


def test_quickstart_notebook_executes(shipped_shape_dataset):
    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += f"\nMODEL_DIR = {str(SHIPPED_TINY)!r}\nDATASET_ROOT = {str(shipped_shape_dataset)!r}\n"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "imagined frames: (12, 3, 64, 64, 3)" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the frames were shown
