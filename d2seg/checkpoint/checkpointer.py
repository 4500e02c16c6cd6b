"""Detectron2's DetectionCheckpointer with crash-safe saving, strict loading and the checkpoint
formats d2seg users own.

- ``save`` writes to a temporary file in the same folder, flushes it to disk and renames it into
  place, and ``last_checkpoint`` is replaced the same way: a run killed at any moment leaves either
  the previous or the new checkpoint, never a truncated one (atomic_io.py: files get the umask's
  mode, killed writers' temporary files are removed at the next save, non-local PathManager
  paths are written through ``self.path_manager``).
- ``_load_file`` recognises, from the keys: d2seg/Detectron2 checkpoints (``{"model": ...}``),
  MMSegmentation 0.x/1.x checkpoints (converted, see convert.py), ImageNet backbones
  (open-mmlab ResNetV1c, torchvision ResNet, HRNetV2, mmcls; see backbones.py: their keys get
  the ``backbone.`` prefix and the heads keep their initialisation) and, through Detectron2,
  ``.pkl`` files (MSRA caffe ``R-50.pkl``/``R-101.pkl``, Detectron2 model zoo).
- ``_load_model`` is strict (compat.py): a checkpoint of another method, backbone or class count
  raises :class:`CheckpointMismatchError` naming the keys, never a half-loaded model; it logs
  how many tensors were loaded and which were skipped or kept as initialised. With
  ``fine_tune`` (the Trainer's MODEL.WEIGHTS, not ``--resume``), a classifier of another class
  count keeps the model's initialisation, with a warning (fine-tuning to another dataset).
- A file that is not a checkpoint (truncated, another format) fails naming the file.
- Paths may be names or URLs (``mmseg://``, ``open-mmlab://``, ``torchvision://``, ``https://``;
  handlers.py); a downloaded mmseg checkpoint is converted once (converted_cache.py), and its
  ``meta`` classes/palette are checked against ``dataset`` (metadata.py).
"""
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from .atomic_io import atomic_torch_save, atomic_write_text
from .backbones import (
    CLASSIFIER_KEYS, backbone_weights_prefix, convert_backbone_state_dict, detect_backbone_format,
)
from .compat import CheckpointMismatchError, check_state_dict, group_keys
from .convert import is_mmseg_checkpoint, unwrap_state_dict  # noqa: F401  (re-exported)
from .converted_cache import read_or_convert
from .metadata import warn_if_metadata_differs

__all__ = ["SegCheckpointer", "atomic_torch_save", "is_mmseg_checkpoint"]


class SegCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, strict by default: a checkpoint that does not fit the model
    (another method, backbone, depth or class count) raises :class:`CheckpointMismatchError`
    naming the keys instead of loading what fits; ``strict=False`` restores Detectron2's
    warn-and-continue behaviour.

    ``fine_tune=True``: weights of the same architecture with another class count load, and every
    head's classifier (``conv_seg``) keeps its initialisation, with a warning naming it and both
    class counts. Never when :meth:`resume_or_load` resumes this run's ``last_checkpoint``: a
    class count that differs there means another run's OUTPUT_DIR."""

    def __init__(self, model, save_dir="", *, strict: bool = True, dataset: str = "",
                 fine_tune: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self.fine_tune = fine_tune
        self._resuming = False
        # registered dataset whose stuff_classes/stuff_colors an mmseg checkpoint's meta must match
        self.dataset = dataset
        self.last_report = None
        self._current_file = None

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
        atomic_torch_save(data, save_file, self.path_manager)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"),
                          self.path_manager)

    def _load_file(self, filename: str):
        """Reads ``filename`` and brings its keys to d2seg's names; what it found is noted under
        ``__d2seg__`` for :meth:`_load_model`."""
        if filename.endswith(".pkl"):
            # Detectron2 / Caffe2 (MSRA R-50.pkl) files: Detectron2's name matching in _load_model
            try:
                data = super()._load_file(filename)
            except Exception as e:
                raise RuntimeError(
                    f"cannot read checkpoint {filename}: {type(e).__name__}: {e} "
                    "(truncated, corrupt or not a pickled checkpoint?)"
                ) from e
            if not isinstance(data.get("model"), dict) or not data["model"]:
                raise RuntimeError(f"{filename} holds no weights")
            data["__d2seg__"] = {"format": f"{data.get('__author__', 'Detectron2')} .pkl"}
            return data
        # mmseg ("state_dict" or bare): converted, or read from the conversion cached next to
        # a download (converted_cache.py)
        converted, data = read_or_convert(filename)
        if converted is not None:
            warn_if_metadata_differs(converted["meta"], self.dataset, filename)
            return {"model": converted["model"], "__d2seg__": {"format": "MMSegmentation"}}
        sd, _, container = unwrap_state_dict(data, filename)
        fmt = detect_backbone_format(sd, self.model.state_dict().keys())
        if fmt is not None:
            model, skipped, name = convert_backbone_state_dict(sd, fmt)
            fills = backbone_weights_prefix(fmt)
            # a backbone that holds the ImageNet network inside it (BiSeNetV1's context path)
            # places the weights itself
            adapt = getattr(getattr(self.model, "backbone", None), "adapt_imagenet_weights", None)
            if adapt is not None:
                model, more, fills = adapt(model, fmt)
                skipped = sorted(set(skipped) | set(more))
            return {
                "model": model,
                "__d2seg__": {"format": name, "skipped": skipped, "backbone_only": True,
                              "backbone_prefix": fills},
            }
        out = dict(data) if container == "model" else {}
        out["model"] = sd
        parsed = getattr(self, "_parsed_url_during_load", None)
        if parsed is not None and "matching_heuristics=True" in (parsed.query or ""):
            out["matching_heuristics"] = True
        out["__d2seg__"] = {"format": "d2seg" if container == "model" else ""}
        return out

    def _load_model(self, checkpoint):
        """Checks that the checkpoint fits before loading (raising CheckpointMismatchError naming
        the keys when ``strict``), loads it, and logs what was loaded; ``self.last_report`` keeps
        the :class:`LoadReport`."""
        info = checkpoint.pop("__d2seg__", {})
        model_state = self.model.state_dict()
        skipped = list(info.get("skipped", []))
        if checkpoint.get("matching_heuristics", False):
            # Detectron2's suffix matching (c2 names for Caffe2 files), then our strict check
            self._convert_ndarray_to_tensor(checkpoint["model"])
            aligned = align_and_update_state_dicts(
                model_state, checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            skipped += [k for k in aligned if k not in model_state and CLASSIFIER_KEYS.match(k)]
            checkpoint["model"] = {k: v for k, v in aligned.items() if k not in skipped}
            checkpoint["matching_heuristics"] = False
        sd = checkpoint["model"]
        self._convert_ndarray_to_tensor(sd)
        if sd and all(k.startswith("module.") for k in sd):
            sd = checkpoint["model"] = {k[len("module."):]: v for k, v in sd.items()}
        report = check_state_dict(model_state, sd, info.get("backbone_only"), skipped,
                                  fine_tune=self.fine_tune and not self._resuming,
                                  backbone_prefix=info.get("backbone_prefix", "backbone."))
        self.last_report = report
        source = self._current_file or "checkpoint"
        if report.errors:
            msg = f"{source} does not fit the model:\n" + report.error_message()
            if self._resuming:
                msg += (f"\n(resuming the last checkpoint of OUTPUT_DIR {self.save_dir}: written "
                        "by a run of another config? Use another OUTPUT_DIR, or MODEL.WEIGHTS "
                        "without --resume to fine-tune from it)")
            if self.strict:
                raise CheckpointMismatchError(msg)
            self.logger.warning(msg + "\n(strict=False: loading what fits)")
        for name, keys in (("missing from", report.aux_missing),
                           ("unexpected in", report.aux_unexpected)):
            if keys:
                self.logger.warning(
                    f"{len(keys)} auxiliary-head tensors {name} {source} (the auxiliary head only "
                    "trains: kept as initialised / ignored)"
                )
        if report.reinitialised:
            for k, _, _ in report.reinitialised:
                del sd[k]  # not loaded: the model's own init stays (Detectron2 would warn again)
            self.logger.warning(report.reinitialised_message())
        incompatible = super()._load_model(checkpoint)
        # what the report already explains (heads of backbone-only weights, caffe BN statistics,
        # auxiliary heads, num_batches_tracked) is not repeated as Detectron2 warnings
        expected = (set(report.kept_init) | set(report.aux_missing)
                    | {k for k, _, _ in report.reinitialised})
        incompatible.missing_keys[:] = [
            k for k in incompatible.missing_keys
            if k not in expected and not k.endswith("num_batches_tracked")
        ]
        incompatible.unexpected_keys[:] = [
            k for k in incompatible.unexpected_keys if k not in report.aux_unexpected
        ]
        self.logger.info(report.summary(source, info.get("format", "")))
        if report.backbone_only:
            self.logger.info(
                "Backbone tensors loaded:\n  " + "\n  ".join(group_keys(report.loaded, None))
            )
        return incompatible

    def resume_or_load(self, path: str, *, resume: bool = True):
        # resuming continues this run (strict); only initialising from ``path`` may fine-tune
        self._resuming = resume and self.has_checkpoint()
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def load(self, path: str, *args, **kwargs):
        self._current_file = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._current_file = None
            # Detectron2 resets it only after a successful load: a failed one would make every
            # later load of this checkpointer fail its assertion
            self._parsed_url_during_load = None
