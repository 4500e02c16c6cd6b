"""What d2seg needs from its environment: the oldest torch it runs on, and optional packages that
only some tools use (each named with the pip extra that brings it)."""
import importlib
import re

__all__ = ["MIN_TORCH", "check_torch_version", "require"]

# torch.OutOfMemoryError (the trainer names the batch of an OOM) exists from torch 2.5;
# torch.amp.GradScaler("cpu") from 2.3.
MIN_TORCH = (2, 5)


def _parse(version: str):
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None:
        raise ImportError(f"d2seg cannot read torch's version {version!r}")
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
