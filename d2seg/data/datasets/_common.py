"""Helpers shared by the built-in dataset registrations."""
import os
from typing import Callable, Sequence

__all__ = ["datasets_root", "require_paths"]


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``./datasets``), as Detectron2's builtin datasets."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_paths(name: str, paths: Sequence[str], hint: str) -> Callable[[], None]:
    """A ``prepare`` callback for register_sem_seg_folder: fails naming the first missing folder
    or file of dataset ``name``, with ``hint`` saying how to get it."""

    def check():
        for path in paths:
            if not os.path.exists(path):
                kind = "split file" if path.endswith(".txt") else "folder"
                raise FileNotFoundError(f"dataset {name!r}: {kind} {path!r} does not exist. {hint}")

    return check
