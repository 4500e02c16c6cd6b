"""What d2seg needs from its environment: the oldest torch and Detectron2 it runs on, and optional
packages that only some tools use (each named with the pip extra that brings it)."""
import importlib
import inspect
import re

__all__ = ["MIN_DETECTRON2", "MIN_TORCH", "check_detectron2_version", "check_torch_version",
           "require"]

# torch.OutOfMemoryError (the trainer names the batch of an OOM) exists from torch 2.5;
# torch.amp.GradScaler("cpu") from 2.3.
MIN_TORCH = (2, 5)
# Detectron2's last release, v0.6 (2021), is too old: d2seg needs its main branch of 2024-02-07 or
# later (commit 3ff5dd1c: build_batch_data_loader(seed=...); before it, AMPTrainer(precision=)
# 2022-11, SimpleTrainer(async_write_metrics=) 2023-04, Pillow 10 support 2023-07, the loader's
# pin_memory 2023-09). That main still calls itself "0.6", so the floor is the version and the
# feature; the sal-detectron2 wheel (main of 2024-04) reports 0.7.2.
MIN_DETECTRON2 = (0, 6)
DETECTRON2_INSTALL = (
    "pip install --no-deps --only-binary=:all: --python-version 3.10 --implementation cp --target "
    "<site-packages> sal-detectron2==0.7.2 (README.md, 'Installing by hand'), or from source: "
    "pip install 'git+https://github.com/facebookresearch/detectron2.git'"
)


def _parse(version: str, name: str = "torch"):
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None:
        raise ImportError(f"d2seg cannot read {name}'s version {version!r}")
    return int(m.group(1)), int(m.group(2))


def check_torch_version(version: str = None) -> None:
    """Raises ImportError naming both versions when torch is older than :data:`MIN_TORCH`."""
    if version is None:
        import torch

        version = torch.__version__
    if _parse(version) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ImportError(
            f"d2seg needs torch >= {need}, but this environment has torch {version} "
            f"(pip install 'torch>={need}')"
        )


def check_detectron2_version(version: str = None, batch_loader=None) -> None:
    """Raises ImportError naming both versions when Detectron2 is older than :data:`MIN_DETECTRON2`
    or than its main branch of 2024-02-07 (``build_batch_data_loader`` without ``seed``)."""
    if version is None:
        import detectron2

        version = detectron2.__version__
    if batch_loader is None:
        from detectron2.data.build import build_batch_data_loader as batch_loader
    need = ".".join(map(str, MIN_DETECTRON2))
    if _parse(version, "Detectron2") < MIN_DETECTRON2:
        have = f"Detectron2 {version}"
    elif "seed" not in inspect.signature(batch_loader).parameters:
        have = f"Detectron2 {version} of before 2024-02 (build_batch_data_loader: no seed)"
    else:
        return
    raise ImportError(
        f"d2seg needs Detectron2 >= {need} from its main branch of 2024-02-07 or later "
        f"(commit 3ff5dd1c), but this environment has {have}: {DETECTRON2_INSTALL}"
    )


def require(module: str, extra: str, user: str):
    """Imports ``module`` or raises ImportError telling ``user`` (a tool or feature) which
    ``pip install 'd2seg[extra]'`` brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{user} needs the optional package {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'd2seg[{extra}]' (from a source checkout: pip install -e '.[{extra}]')"
        ) from e
