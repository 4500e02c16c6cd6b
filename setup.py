import glob
import os
import shutil

from setuptools import find_packages, setup


def get_model_zoo_configs():
    """Ships configs/ as d2seg/model_zoo/configs (a symlink, or a copy where links fail), like
    Detectron2's setup.py, so that d2seg.model_zoo finds them in an installed package."""
    here = os.path.dirname(os.path.realpath(__file__))
    source = os.path.join(here, "configs")
    destination = os.path.join(here, "d2seg", "model_zoo", "configs")
    if os.path.exists(source):  # (absent when building from an sdist: use its copy)
        if os.path.islink(destination):
            os.unlink(destination)
        elif os.path.isdir(destination):
            shutil.rmtree(destination)
        try:
            os.symlink(source, destination)
        except OSError:
            shutil.copytree(source, destination)
    return [os.path.relpath(p, os.path.join(here, "d2seg", "model_zoo"))
            for p in glob.glob(os.path.join(destination, "**", "*.yaml"), recursive=True)]


# Optional dependencies, by use. A tool that lacks one names its extra (d2seg/utils/dependencies.py).
EXTRAS = {
    # tools/datasets/: SBD and Pascal Context .mat files; Cityscapes' polygon route
    "datasets": ["scipy", "cityscapesscripts"],
    # tools/export_model.py, tools/benchmark.py --format onnx
    "deploy": ["onnx", "onnxruntime", "onnxscript"],
    # tools/export_model.py --int8-backend openvino (and running its model_int8.xml); the
    # versions measured in docs/deployment.md
    "openvino": ["onnx", "onnxruntime", "openvino>=2026.4", "nncf>=3.4"],
    # tools/launch_slurm.py
    "slurm": ["submitit"],
}
# what the test suite imports (the MMSegmentation reference is installed by tools/install_test_deps.sh)
EXTRAS["test"] = (["pytest", "hypothesis"] + EXTRAS["datasets"] + EXTRAS["deploy"]
                  + EXTRAS["openvino"] + EXTRAS["slurm"])
EXTRAS["all"] = sorted({p for v in EXTRAS.values() for p in v})

setup(
    name="d2seg",
    version="0.1.0",
    description="MMSegmentation's semantic-segmentation model zoo as a Detectron2 plugin",
    packages=find_packages(include=["d2seg", "d2seg.*"]),
    python_requires=">=3.8",
    # Detectron2 itself is not on PyPI under its own name (README: the sal-detectron2 wheel or a
    # source build); these are its pure-Python needs and d2seg's. torch >= 2.5 and Detectron2 >= 0.6
    # from its main of 2024-02-07 on: see d2seg/utils/dependencies.py (MIN_TORCH, MIN_DETECTRON2).
    install_requires=[
        "torch>=2.5", "torchvision", "numpy", "opencv-python-headless", "Pillow", "tqdm",
        "matplotlib", "fvcore", "iopath", "pycocotools", "yacs", "termcolor", "tabulate",
        "cloudpickle", "tensorboard", "omegaconf", "hydra-core",
    ],
    extras_require=EXTRAS,
    include_package_data=True,
    package_data={"d2seg.model_zoo": get_model_zoo_configs() + ["mmseg_checkpoints.json"]},
)
