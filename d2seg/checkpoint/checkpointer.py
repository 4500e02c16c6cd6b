"""Detectron2's DetectionCheckpointer with crash-safe saving and MMSegmentation checkpoints.

- ``save`` writes to a temporary file in the same folder, flushes it to disk and renames it into
  place, and ``last_checkpoint`` is replaced the same way: a run killed at any moment leaves either
  the previous or the new checkpoint, never a truncated one.
- ``_load_file`` recognises an MMSegmentation checkpoint (``state_dict`` with ``backbone.`` /
  ``decode_head.`` keys, optionally ``meta``) and renames its keys to d2seg's.
- A file that is not a checkpoint (truncated, another format) fails naming the file.
"""
import os
import tempfile

import torch

from detectron2.checkpoint import DetectionCheckpointer

from .mmseg import convert_mmseg_state_dict

__all__ = ["SegCheckpointer", "atomic_torch_save", "is_mmseg_checkpoint"]


def atomic_torch_save(obj, path: str) -> None:
    """torch.save to ``path`` through a temporary file + rename (atomic on POSIX)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write_text(text: str, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_mmseg_checkpoint(data) -> bool:
    sd = data.get("state_dict") if isinstance(data, dict) else None
    return isinstance(sd, dict) and any(
        k.startswith(("decode_head.", "backbone.", "auxiliary_head.")) for k in sd
    )


class SegCheckpointer(DetectionCheckpointer):
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        self.path_manager.mkdirs(self.save_dir)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        _atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def _load_file(self, filename: str):
        if filename.endswith(".pkl"):
            return super()._load_file(filename)
        try:
            data = torch.load(filename, map_location="cpu", weights_only=False)
        except Exception as e:
            raise RuntimeError(
                f"cannot read checkpoint {filename}: {type(e).__name__}: {e} "
                "(truncated, corrupt or not a PyTorch checkpoint?)"
            ) from e
        if is_mmseg_checkpoint(data):
            sd = data["state_dict"]
            is_cascade = any(k.startswith("decode_head.1.") for k in sd)
            is_resnet = any(k.startswith(("backbone.layer1.", "backbone.stem.")) for k in sd)
            self.logger.info(f"{filename} is an MMSegmentation checkpoint: converting its keys")
            return {
                "model": convert_mmseg_state_dict(sd, is_cascade=is_cascade, is_resnet=is_resnet),
                "matching_heuristics": False,
            }
        if not isinstance(data, dict):
            raise RuntimeError(f"{filename} holds a {type(data).__name__}, not a checkpoint dict")
        if "model" not in data:
            # a bare state_dict (e.g. torchvision)
            if all(isinstance(v, torch.Tensor) for v in data.values()):
                return {"model": data}
            raise RuntimeError(
                f"{filename} has no 'model' or 'state_dict' entry (keys: {sorted(data)[:8]})"
            )
        return data
