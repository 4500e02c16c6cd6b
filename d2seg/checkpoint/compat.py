"""Does a (converted) state_dict fit a model? Strict rules shared by SegCheckpointer and
tools/convert_mmseg_checkpoint.py, so that a model is never silently half-loaded.

- **Full checkpoint** (keys outside ``backbone.``): every model tensor must be in it, every tensor
  of it must be in the model, with the same shapes. Only the auxiliary heads (training-only) may
  be absent on either side: reported as a warning.
- **Backbone checkpoint** (every key under ``backbone.``, e.g. ImageNet weights): every backbone
  tensor must be in it and every tensor of it in the model; the heads keep their initialisation
  (and, for weights of part of the backbone such as STDC's STDCNet, the rest of the backbone).
  BN running statistics may be absent when the checkpoint has none at all (caffe/MSRA weights
  fold them into the affine).
- ``num_batches_tracked`` (absent from older PyTorch files) is never required.
- **Fine-tuning** (``fine_tune=True``: MODEL.WEIGHTS initialising a training run): a classifier
  (every head's ``conv_seg``, and the class-sized tensors heads register with
  :func:`register_class_tensors`) whose shapes differ from the model's only in the class count is not
  an error: it is reported as re-initialised and keeps the model's own initialisation (as
  Detectron2 and mmseg do when fine-tuning to another dataset). Any other difference still is.
"""
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple, Union

__all__ = ["CheckpointMismatchError", "LoadReport", "check_state_dict", "group_keys",
           "register_class_tensors"]

_AUX = "auxiliary_heads."
_BN_STATS = ("running_mean", "running_var")
# tensors sized by the class count: (key pattern, class dimension). The 1x1 classifier of every
# decode head (decode, auxiliary, cascade); heads with others register them
_CLASS_TENSORS = [(re.compile(r"(^|\.)conv_seg\.(weight|bias)$"), 0)]


def register_class_tensors(name_regex: str, class_dim: int = 0):
    """Declares a head's tensors whose ``class_dim`` is the class count (matched against the
    end of a state_dict key, e.g. Segmenter's ``cls_emb``, dim 1): fine-tuning to another class
    count re-initialises them like ``conv_seg``."""
    _CLASS_TENSORS.append((re.compile(rf"(^|\.){name_regex}$"), class_dim))


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model (other method, backbone or class count)."""


def _natural(key: str):
    # res4.6 before res4.10
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key)]


def group_keys(keys: Iterable[str], limit: Optional[int] = 30) -> List[str]:
    """``a.b.weight, a.b.bias`` -> ``a.b.{bias, weight}``; at most ``limit`` lines."""
    groups: Dict[str, List[str]] = defaultdict(list)
    for k in sorted(keys, key=_natural):
        head, _, tail = k.rpartition(".")
        groups[head].append(tail)
    lines = [
        (f"{head}.{{{', '.join(tails)}}}" if len(tails) > 1 else f"{head}.{tails[0]}")
        if head else tails[0]
        for head, tails in groups.items()
    ]
    if limit is not None and len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more groups"]
    return lines


def _block(title: str, keys, limit=30) -> str:
    return f"{title} ({len(keys)}):\n  " + "\n  ".join(group_keys(keys, limit))


@dataclass
class LoadReport:
    backbone_only: bool
    loaded: List[str] = field(default_factory=list)  # model keys that get a checkpoint tensor
    missing: List[str] = field(default_factory=list)  # model keys the checkpoint lacks (error)
    unexpected: List[str] = field(default_factory=list)  # checkpoint keys not in the model (error)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, ckpt, model)
    kept_init: List[str] = field(default_factory=list)  # model keys left as initialised, by design
    aux_missing: List[str] = field(default_factory=list)  # warning only
    aux_unexpected: List[str] = field(default_factory=list)  # warning only
    skipped: List[str] = field(default_factory=list)  # source keys dropped on purpose (fc.*)
    # (classifier key, checkpoint classes, model classes): kept as initialised when fine-tuning
    reinitialised: List[Tuple[str, int, int]] = field(default_factory=list)

    @property
    def errors(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def error_message(self) -> str:
        parts = []
        for k, shape_ckpt, shape_model in self.mismatched:
            hint = ""
            if any(p.search(k) for p, _ in _CLASS_TENSORS):
                hint = (" (a checkpoint for another number of classes? "
                        "MODEL.SEM_SEG_HEAD.NUM_CLASSES)")
            parts.append(
                f"shape mismatch for {k}: {tuple(shape_ckpt)} in the checkpoint, "
                f"{tuple(shape_model)} in the model{hint}"
            )
        if self.unexpected:
            parts.append(_block("checkpoint keys the model does not have", self.unexpected))
        if self.missing:
            parts.append(_block("model keys missing from the checkpoint", self.missing))
        if self.unexpected and self.missing:
            parts.append("(a checkpoint of another method, backbone or depth than the config?)")
        return "\n".join(parts)

    def reinitialised_message(self) -> str:
        """One line per classifier: ``decode_head.conv_seg: checkpoint has 19 classes, model has
        3: re-initialised (fine-tuning)``."""
        # a module's weight and bias on one line; a bare parameter (Segmenter's cls_emb) by name
        modules = {re.sub(r"\.(weight|bias)$", "", k): (ck, m) for k, ck, m in self.reinitialised}
        return "\n".join(f"{name}: checkpoint has {ck} classes, model has {m}: re-initialised "
                         "(fine-tuning)" for name, (ck, m) in modules.items())

    def summary(self, source: str = "checkpoint", fmt: str = "") -> str:
        what = f"{fmt} " if fmt else ""
        lines = [
            f"Loaded {len(self.loaded)} tensors from {what}{source}"
            + (" into the backbone (backbone-only weights)" if self.backbone_only else "")
        ]
        if self.skipped:
            lines.append(_block("skipped (not used by d2seg)", self.skipped, None))
        if self.kept_init:
            lines.append(_block("not in the checkpoint, kept as initialised", self.kept_init, 12))
        return "\n".join(lines)


def _class_dim(key: str, shape_ckpt: tuple, shape_model: tuple) -> Optional[int]:
    """The class dimension of a class-sized tensor that differs from the model's in its number
    of classes only; None for any other difference."""
    for pattern, dim in _CLASS_TENSORS:
        if pattern.search(key) and len(shape_ckpt) == len(shape_model) > dim:
            others = [(a, b) for i, (a, b) in enumerate(zip(shape_ckpt, shape_model)) if i != dim]
            if all(a == b for a, b in others):
                return dim
    return None


def check_state_dict(model_state: Dict, ckpt_state: Dict, backbone_only: Optional[bool] = None,
                     skipped: Iterable[str] = (), fine_tune: bool = False,
                     backbone_prefix: Union[str, Tuple[str, ...]] = "backbone.") -> LoadReport:
    """Compares checkpoint keys/shapes with the model's; ``backbone_only`` defaults to "every
    checkpoint key is under ``backbone.``". With ``fine_tune``, classifiers of another class
    count go to ``reinitialised`` instead of ``mismatched``. Backbone weights must fill the model
    keys under ``backbone_prefix`` (narrower prefixes, one or a tuple, when they cover part of
    the backbone module, e.g. STDC's ``backbone.backbone.``)."""
    if backbone_only is None:
        backbone_only = bool(ckpt_state) and all(k.startswith("backbone.") for k in ckpt_state)
    r = LoadReport(backbone_only=backbone_only, skipped=list(skipped))
    ckpt_has_stats = any(k.endswith(_BN_STATS) for k in ckpt_state)
    for k, v in ckpt_state.items():
        if k not in model_state:
            if k in ("pixel_mean", "pixel_std"):  # config values win (as in Detectron2)
                continue
            (r.aux_unexpected if k.startswith(_AUX) else r.unexpected).append(k)
        elif tuple(v.shape) != tuple(model_state[k].shape):
            shapes = (tuple(v.shape), tuple(model_state[k].shape))
            dim = _class_dim(k, *shapes) if fine_tune else None
            if dim is not None:
                r.reinitialised.append((k, shapes[0][dim], shapes[1][dim]))
            else:
                r.mismatched.append((k, *shapes))
        else:
            r.loaded.append(k)
    for k in model_state:
        if k in ckpt_state or k.endswith("num_batches_tracked"):
            continue
        if backbone_only and not k.startswith(backbone_prefix):
            r.kept_init.append(k)
        elif backbone_only and k.endswith(_BN_STATS) and not ckpt_has_stats:
            r.kept_init.append(k)
        elif not backbone_only and k.startswith(_AUX):
            r.aux_missing.append(k)
        else:
            r.missing.append(k)
    return r
