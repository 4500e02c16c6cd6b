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


setup(
    name="d2seg",
    version="0.1.0",
    description="MMSegmentation's semantic-segmentation model zoo as a Detectron2 plugin",
    packages=find_packages(include=["d2seg", "d2seg.*"]),
    python_requires=">=3.8",
    # torch (>= 2.1) and detectron2 are installed by the user (see README): detectron2 is not on
    # PyPI under its own name and torch builds depend on the machine.
    install_requires=["numpy", "opencv-python-headless", "Pillow", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "hypothesis"]},
    include_package_data=True,
    package_data={"d2seg.model_zoo": get_model_zoo_configs()},
)
