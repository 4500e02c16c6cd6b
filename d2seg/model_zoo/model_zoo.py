"""Finds d2seg's configs by name, from an installed package or a source checkout.

``setup.py`` links (or copies) the repository's ``configs/`` to ``d2seg/model_zoo/configs`` at
build time, as Detectron2 does, so an installed d2seg carries them; in a source checkout where
that link has not been made, the repository's ``configs/`` is used.

``trained=True`` points ``MODEL.WEIGHTS`` at the checkpoint MMSegmentation 0.30 released for the
config of the same name (``mmseg://<method>/<stem>``, resolved and verified when loaded; see
docs/checkpoints.md), as Detectron2's ``model_zoo.get(name, trained=True)`` does.
"""
import difflib
import os
from typing import List, Optional

__all__ = ["get", "get_checkpoint_url", "get_config", "get_config_file", "list_configs"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def _configs_root() -> str:
    for root in (os.path.join(_HERE, "configs"),
                 os.path.join(os.path.dirname(os.path.dirname(_HERE)), "configs")):
        if os.path.isdir(os.path.join(root, "_base_")):
            return root
    raise RuntimeError(
        "d2seg's configs are missing: reinstall d2seg (pip install .), which ships them as "
        "d2seg/model_zoo/configs"
    )


def list_configs() -> List[str]:
    """Every config name (path under configs/, e.g. 'pspnet/pspnet_r50-d8_...yaml'), sorted."""
    root = _configs_root()
    out = []
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in files:
            if f.endswith(".yaml"):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def get_config_file(config_path: str) -> str:
    """The absolute path of a shipped config.

    Args:
        config_path: its path under configs/ (".yaml" may be left out), e.g.
            "pspnet/pspnet_r50-d8_512x1024_80k_cityscapes.yaml".
    """
    name = config_path.replace("\\", "/").lstrip("/")
    if not name.endswith(".yaml"):
        name += ".yaml"
    path = os.path.join(_configs_root(), name)
    if os.path.isfile(path):
        return path
    names = list_configs()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    if not close:  # e.g. a stem without its folder: match on the file name
        base = os.path.basename(name)
        close = [n for n in names if os.path.basename(n) == base] or [
            n for n in names if base[:-5] in n][:5]
    hint = ("; close matches: " + ", ".join(close)) if close else ""
    raise FileNotFoundError(
        f"{config_path!r} is not in d2seg's model zoo ({len(names)} configs; names are paths "
        f"under configs/, see d2seg.model_zoo.list_configs()){hint}"
    )


def _zoo_name(config_path: str) -> str:
    name = config_path.replace("\\", "/").lstrip("/")
    return name[:-len(".yaml")] if name.endswith(".yaml") else name


def get_checkpoint_url(config_path: str) -> str:
    """The URL of the checkpoint MMSegmentation 0.30 released for a config, e.g.
    ``get_checkpoint_url("pspnet/pspnet_r50-d8_512x1024_40k_cityscapes")``. The canonical
    ``download.openmmlab.com`` address: ``D2SEG_MIRROR`` is applied when it is downloaded.
    Raises KeyError for a config without a released checkpoint."""
    from ..checkpoint.catalog import mmseg_checkpoint_url

    return mmseg_checkpoint_url(_zoo_name(config_path))


def get_config(config_path: str, trained: bool = False):
    """A Detectron2 CfgNode with d2seg's keys and the shipped config merged in (not frozen).
    ``trained``: ``MODEL.WEIGHTS`` = MMSegmentation's trained checkpoint for this config
    (``mmseg://<method>/<stem>``); otherwise the config's own (ImageNet backbone) weights."""
    from detectron2.config import get_cfg

    from ..config import add_d2seg_config

    if trained:
        get_checkpoint_url(config_path)  # fails now, naming the config, if mmseg released none
    cfg = get_cfg()
    add_d2seg_config(cfg)
    cfg.merge_from_file(get_config_file(config_path))
    if trained:
        cfg.MODEL.WEIGHTS = "mmseg://" + _zoo_name(config_path)
    return cfg


def get(config_path: str, trained: bool = False, device: Optional[str] = None):
    """The model of a shipped config with its weights loaded, in eval mode:
    ``get("pspnet/pspnet_r50-d8_512x1024_40k_cityscapes", trained=True)``.

    Args:
        trained: load MMSegmentation's trained checkpoint (downloaded once, verified, converted
            once); otherwise the config's ``MODEL.WEIGHTS`` (ImageNet backbone weights, if any).
        device: "cpu", "cuda", ...; default: "cuda" when available, else "cpu".
    """
    import torch
    from detectron2.modeling import build_model

    from ..checkpoint import SegCheckpointer

    cfg = get_config(config_path, trained)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg)
    dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else ""
    SegCheckpointer(model, dataset=dataset).load(cfg.MODEL.WEIGHTS)
    return model.eval()
