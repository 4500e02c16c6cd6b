from setuptools import find_packages, setup

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
    package_data={"d2seg": ["model_zoo/configs/**/*.yaml"]},
)
