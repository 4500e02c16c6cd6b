"""tools/demo.py (overlays, raw labels, folders, registered datasets, TTA) and
tools/visualize_data.py (the training pipeline's output) on a tiny random model."""
import importlib.util
import os

import numpy as np
from PIL import Image

from d2seg.data import register_sem_seg_folder

import dataset_trees as trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["MODEL.WEIGHTS", "", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.AUX_HEAD.CONVS_DIM", "8", "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "3", "INPUT.TEST_IMG_SCALE", "[32,32]", "INPUT.IMG_SCALE", "[32,32]", "INPUT.CROP.SIZE", "[12,12]"]
CONFIG = os.path.join(REPO, "configs", "quickstart.yaml")


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_folder_dataset(tmp_path, name):
    for i in range(3):
        trees.save_image(str(tmp_path / "img" / f"{i}.jpg"), 20, 30, seed=i)
        trees.save_label(str(tmp_path / "gt" / f"{i}.png"), trees.blocks([0, 1, 2, 255], 20, 30))
    register_sem_seg_folder(name, str(tmp_path / "img"), str(tmp_path / "gt"), ["a", "b", "c"])
    return ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)"]


def test_demo_on_folder_and_dataset(tmp_path):
    demo = load_tool("demo")
    data = tiny_folder_dataset(tmp_path, "test_demo_ds")
    out = tmp_path / "out"
    written = demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "img"), "--output", str(out),
                         "--save-labels", "--max", "2", *TINY, *data])
    assert [os.path.basename(w) for w in written] == ["0_overlay.png", "1_overlay.png"]
    assert Image.open(written[0]).size == (30, 20)  # the original size
    label = np.asarray(Image.open(out / "0_label.png"))
    assert label.shape == (20, 30) and label.max() < 3
    written = demo.main(["--config-file", CONFIG, "--dataset", "test_demo_ds", "--output",
                         str(tmp_path / "out2"), *TINY, *data, "TEST.AUG.ENABLED", "True",
                         "TEST.AUG.RATIOS", "[0.5,1.0]"])
    # image | ground truth | prediction side by side, scaled up (x6) to at least 512 px wide
    assert len(written) == 3 and Image.open(written[2]).size == (3 * 30 * 6, 20 * 6)


def test_visualize_data(tmp_path):
    vis = load_tool("visualize_data")
    data = tiny_folder_dataset(tmp_path, "test_visualize_ds")
    written = vis.main(["--config-file", CONFIG, "--output-dir", str(tmp_path / "vis"), "--num", "2",
                        *TINY, *data])
    assert len(written) == 2
    assert Image.open(written[0]).size == (24, 12)  # the 12x12 training crop, image | overlay
    written = vis.main(["--config-file", CONFIG, "--output-dir", str(tmp_path / "ann"), "--source",
                        "annotation", "--dataset", "test_visualize_ds", *TINY, *data])
    assert len(written) == 3 and Image.open(written[0]).size == (60, 20)
    img = np.asarray(Image.open(written[0]))
    assert (img[:, :30] != img[:, 30:]).any()  # the overlay differs from the image
