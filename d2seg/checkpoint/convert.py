"""Reading checkpoint files and converting MMSegmentation checkpoints to d2seg's names.

MMSegmentation writes ``{"meta": ..., "state_dict": ...}`` (0.x: mmcv's ``save_checkpoint``, plus
``optimizer`` for training snapshots; 1.x: mmengine's runner, plus ``message_hub``, ``optimizer``
and ``param_schedulers``, with ``meta["dataset_meta"]`` instead of ``meta["CLASSES"]``). The model
keys are the same in both versions; 1.x models own a ``data_preprocessor`` whose ``mean``/``std``
buffers are not persistent, but a ``data_preprocessor.*`` key (custom pre-processors, older
mmengine) is dropped here: d2seg normalises with ``MODEL.PIXEL_MEAN``/``PIXEL_STD``. A model saved
while wrapped in (Distributed)DataParallel carries a ``module.`` prefix, removed as mmcv does.
"""
import os
import re
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .atomic_io import atomic_torch_save
from .compat import CheckpointMismatchError, check_state_dict
from .mmseg import convert_mmseg_state_dict

__all__ = [
    "read_checkpoint_file",
    "unwrap_state_dict",
    "looks_like_mmseg",
    "is_mmseg_checkpoint",
    "mmseg_layout",
    "load_mmseg_checkpoint",
    "convert_mmseg_checkpoint",
]

_HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")
# keys d2seg has no use for: the 1.x data pre-processor (normalisation is MODEL.PIXEL_MEAN/STD)
_DROP = re.compile(r"^data_preprocessor\.")


def read_checkpoint_file(filename: str) -> Any:
    """``torch.load`` on CPU, failing with the file's name when it is not a PyTorch checkpoint."""
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint {filename} does not exist")
    try:
        # weights_only=False: mmseg/mmengine checkpoints pickle their meta (config text,
        # numpy arrays in message_hub), so load only files you trust.
        return torch.load(filename, map_location="cpu", weights_only=False)
    except Exception as e:
        hint = "truncated, corrupt or not a PyTorch checkpoint?"
        if filename.lower().endswith(".onnx"):
            hint = ("an exported ONNX graph, not weights: run it with tools/evaluate_deployed.py "
                    "--model, tools/demo.py --model or SemSegPredictor(cfg, model_file=...)")
        raise RuntimeError(
            f"cannot read checkpoint {filename}: {type(e).__name__}: {e} ({hint})"
        ) from e


def _to_tensors(sd: Dict[str, Any], filename: str) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor):
            raise RuntimeError(
                f"{filename}: entry {k!r} of the state_dict is a {type(v).__name__}, not a tensor"
            )
        out[k] = v
    return out


def unwrap_state_dict(data: Any, filename: str = "<checkpoint>") -> Tuple[Dict, Dict, str]:
    """``(state_dict, meta, container)`` of a loaded checkpoint: container is ``"state_dict"``
    (mmcv/mmengine), ``"model"`` (Detectron2) or ``"bare"`` (a state_dict, e.g. torchvision).
    ``module.`` prefixes and ``data_preprocessor.*`` keys are removed."""
    if not isinstance(data, dict):
        raise RuntimeError(f"{filename} holds a {type(data).__name__}, not a checkpoint dict")
    if isinstance(data.get("state_dict"), dict):
        sd, container = data["state_dict"], "state_dict"
    elif isinstance(data.get("model"), dict):
        sd, container = data["model"], "model"
    elif data and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data.values()):
        sd, container = data, "bare"
    else:
        raise RuntimeError(
            f"{filename} is not a model checkpoint: no 'state_dict' or 'model' entry and not a "
            f"state_dict of tensors (top-level keys: {sorted(map(str, data))[:8]})"
        )
    if not sd:
        raise RuntimeError(f"{filename}: the checkpoint's {container} is empty")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not _DROP.match(k)}
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    return _to_tensors(sd, filename), meta, container


def looks_like_mmseg(sd: Dict[str, Any]) -> bool:
    """An mmseg segmentor's state_dict: ``auxiliary_head.`` keys, or ``decode_head.`` keys with
    mmcv ``ConvModule`` names (``.conv.weight``, ``.bn.weight``; every mmseg head has one but
    CGNet's convless FCNHead, whose backbone has ``.bn.``), which d2seg's names never contain."""
    if any(k.startswith("auxiliary_head.") for k in sd):
        return True
    return any(k.startswith("decode_head.") for k in sd) and any(
        re.search(r"\.(bn|gn)\.weight$", k)
        or (k.startswith("decode_head.") and re.search(r"\.conv\.weight$", k))
        for k in sd
    )


def is_mmseg_checkpoint(data) -> bool:
    """A loaded object that is an MMSegmentation segmentor checkpoint."""
    try:
        sd, _, container = unwrap_state_dict(data)
        return container != "model" and looks_like_mmseg(sd)
    except RuntimeError:
        return False


def mmseg_layout(sd: Dict[str, Any]) -> Dict[str, bool]:
    """Which of convert_mmseg_state_dict's rules apply: ``is_cascade`` (OCRNet's
    ``decode_head.{0,1}``) and ``is_resnet`` (mmseg ResNet names; HRNet and MiT keep their
    names)."""
    is_hrnet = any(k.startswith(("backbone.transition1.", "backbone.stage2.")) for k in sd)
    # ResNet blocks are backbone.layerN.<block>.*; MobileNetV3's backbone.layerN.<module> are not;
    # the V1c stem holds plain convs / BNs (CGNet's backbone.stem.N are ConvModules: .conv/.bn);
    # MobileNetV2's stem conv1 and blocks layer1.N.conv.M are ConvModules too (.conv. follows);
    # a ResNet nested in the backbone (ICNet's backbone.backbone.) is one too
    is_resnet = not is_hrnet and any(
        re.match(r"backbone\.(?:backbone\.)?(layer1\.\d+\.(?!conv\.)|stem\.\d+\.(?!conv\.|bn\.|activate\.)"
                 r"|conv1\.(?!conv\.|bn\.|activate\.))", k) for k in sd
    )
    is_cascade = any(k.startswith("decode_head.0.") for k in sd) and any(
        k.startswith("decode_head.1.") for k in sd
    )
    return {"is_cascade": is_cascade, "is_resnet": is_resnet}


def _meta_summary(meta: Dict) -> Dict[str, Any]:
    ds = meta.get("dataset_meta") or {}
    classes = meta.get("CLASSES") or ds.get("classes")
    palette = meta.get("PALETTE")
    palette = ds.get("palette") if palette is None else palette  # (may be a numpy array)
    version = meta.get("mmseg_version")
    if not version and meta.get("mmengine_version"):
        version = f"1.x (mmengine {meta['mmengine_version']})"
    out = {"mmseg_version": version}
    if classes is not None:
        out["classes"] = list(classes)
    if palette is not None:
        out["palette"] = [[int(c) for c in color] for color in palette]
    return {k: v for k, v in out.items() if v}


def load_mmseg_checkpoint(src) -> Dict[str, Any]:
    """An MMSegmentation 0.x/1.x checkpoint (a path or the loaded object) as a Detectron2
    checkpoint ``{"model": d2seg state_dict, "meta": {...}}``; tensors are unchanged."""
    filename = src if isinstance(src, str) else "<checkpoint>"
    data = read_checkpoint_file(src) if isinstance(src, str) else src
    sd, meta, container = unwrap_state_dict(data, filename)
    if container == "model" or not looks_like_mmseg(sd):
        raise RuntimeError(
            f"{filename} is not an MMSegmentation segmentor checkpoint (no mmseg "
            f"'decode_head.'/'auxiliary_head.' keys; first keys: {sorted(sd)[:5]})"
        )
    layout = mmseg_layout(sd)
    converted = convert_mmseg_state_dict(sd, **layout)
    if len(converted) != len(sd):
        raise RuntimeError(f"{filename}: two mmseg keys map to the same d2seg key")
    info = dict(_meta_summary(meta), source=os.path.basename(filename), **layout)
    return {"model": converted, "meta": info}


def convert_mmseg_checkpoint(src, dst: Optional[str] = None, model=None, strict: bool = True):
    """Converts an mmseg checkpoint; with ``model`` checks it fits (raising
    :class:`CheckpointMismatchError` naming the keys when ``strict``); writes ``dst``
    (atomically) when given. Returns ``(checkpoint, report)``; report is None without a model."""
    ckpt = load_mmseg_checkpoint(src)
    report = None
    if model is not None:
        report = check_state_dict(model.state_dict(), ckpt["model"])
        if strict and report.errors:
            raise CheckpointMismatchError(
                f"{src if isinstance(src, str) else 'the checkpoint'} does not fit the model:\n"
                + report.error_message()
            )
    if dst:
        folder = os.path.dirname(os.path.abspath(dst))
        os.makedirs(folder, exist_ok=True)
        atomic_torch_save(
            {"model": ckpt["model"], "meta": ckpt["meta"], "__author__": "d2seg-convert-mmseg"},
            dst,
        )
    return ckpt, report
