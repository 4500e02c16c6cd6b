"""Names of weights -> URLs: ``mmseg://<method>/<config stem>`` (the checkpoint MMSegmentation 0.30
released for that config), ``open-mmlab://<name>`` and ``torchvision://<name>`` (ImageNet weights,
as mmcv resolves them), from the table ``d2seg/model_zoo/mmseg_checkpoints.json`` (generated from
mmseg's metafiles by ``python dev/build_checkpoint_table.py``).

``D2SEG_MIRROR`` (read at each download) replaces ``https://download.openmmlab.com``.
"""
import difflib
import functools
import json
import os
from typing import Callable, Dict, Optional

__all__ = [
    "MMSEG_PREFIX", "IMAGENET_PREFIXES", "OPENMMLAB_URL", "checkpoint_table", "resolve_name",
    "mmseg_checkpoint_url", "apply_mirror", "imagenet_weights_for", "register_imagenet_weights_rule",
    "from_scratch_warning",
    "table_urls",
]

MMSEG_PREFIX = "mmseg://"
IMAGENET_PREFIXES = ("open-mmlab://", "torchvision://", "mmcls://")  # mmcls: MobileNetV2
OPENMMLAB_URL = "https://download.openmmlab.com"
_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "model_zoo", "mmseg_checkpoints.json")


@functools.lru_cache(maxsize=None)
def checkpoint_table() -> Dict:
    """``{"imagenet": {name: url}, "configs": {"<method>/<stem>": {"weights", "pretrained",
    "dataset", "mIoU"}}}``."""
    with open(_TABLE) as f:
        return json.load(f)


def _config_key(name: str) -> str:
    key = name[len(MMSEG_PREFIX):] if name.startswith(MMSEG_PREFIX) else name
    key = key.replace("\\", "/").strip("/")
    for suffix in (".yaml", ".py"):
        if key.endswith(suffix):
            key = key[:-len(suffix)]
    return key


def mmseg_checkpoint_url(name: str) -> str:
    """The URL of the checkpoint MMSegmentation released for ``name``
    (``pspnet/pspnet_r50-d8_512x1024_40k_cityscapes``, optionally with ``mmseg://``/``.yaml``)."""
    key = _config_key(name)
    configs = checkpoint_table()["configs"]
    entry = configs.get(key)
    if entry is None:
        close = difflib.get_close_matches(key, list(configs), n=3, cutoff=0.7)
        if not close:  # a stem without its method folder
            close = [k for k in configs if k.split("/", 1)[1] == key][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"{name!r}: not an MMSegmentation 0.30 config of d2seg's 13 methods "
            f"(names are <method>/<config stem>, e.g. pspnet/pspnet_r50-d8_512x1024_40k_cityscapes)"
            + hint
        )
    if not entry["weights"]:
        raise KeyError(
            f"{name!r}: MMSegmentation 0.30 released no checkpoint for this config (see its "
            f"README in configs/{key.split('/')[0]}/ and docs/checkpoints.md)"
        )
    return entry["weights"]


def resolve_name(name: str) -> str:
    """``mmseg://``, ``open-mmlab://`` or ``torchvision://`` name -> its canonical URL."""
    if name.startswith(MMSEG_PREFIX):
        return mmseg_checkpoint_url(name)
    if name.startswith(IMAGENET_PREFIXES):
        url = checkpoint_table()["imagenet"].get(name)
        if url is None:
            known = ", ".join(sorted(checkpoint_table()["imagenet"]))
            raise KeyError(f"{name!r} is not a known ImageNet checkpoint name (known: {known})")
        return url
    raise ValueError(f"{name!r} is not an mmseg://, open-mmlab:// or torchvision:// name")


def apply_mirror(url: str, mirror: Optional[str] = None) -> str:
    """``url`` with ``https://download.openmmlab.com`` replaced by ``mirror`` (default: the
    ``D2SEG_MIRROR`` environment variable; unset or empty = no change)."""
    mirror = os.environ.get("D2SEG_MIRROR", "") if mirror is None else mirror
    if mirror and url.startswith(OPENMMLAB_URL + "/"):
        return mirror.rstrip("/") + url[len(OPENMMLAB_URL):]
    return url


def table_urls() -> set:
    """Every URL of the table (released checkpoints, ImageNet weights, URLs configs start from)."""
    t = checkpoint_table()
    urls = set(t["imagenet"].values())
    for e in t["configs"].values():
        urls.update(u for u in (e["weights"], e["pretrained"]) if u and u.startswith("http"))
    return urls


# backbone NAME -> fn(cfg) -> the ImageNet weights name mmseg's config of that shape loads, or
# None; each family registers its rule beside its model (register_imagenet_weights_rule)
_IMAGENET_WEIGHTS_RULES: Dict[str, Callable] = {}


def register_imagenet_weights_rule(*backbone_names: str):
    """Decorator: ``fn(cfg) -> Optional[str]`` answers :func:`imagenet_weights_for` for configs
    whose ``MODEL.BACKBONE.NAME`` is one of ``backbone_names``."""
    def deco(fn):
        for name in backbone_names:
            _IMAGENET_WEIGHTS_RULES[name] = fn
        return fn
    return deco


def imagenet_weights_for(cfg) -> Optional[str]:
    """The ImageNet weights MMSegmentation initialises this config's backbone from (its
    ``pretrained``: ResNetV1c-18/50/101 with mmseg's widths -> ``open-mmlab://resnet{d}_v1c``,
    HRNetV2 W18-Small/W18/W48 -> ``open-mmlab://msra/hrnetv2_w18_small`` ...), or None for
    another backbone (e.g. the quickstart's narrow ResNet)."""
    rule = _IMAGENET_WEIGHTS_RULES.get(cfg.MODEL.BACKBONE.NAME)
    return rule(cfg) if rule is not None else None


def from_scratch_warning(cfg) -> Optional[str]:
    """The WARNING for training with ``MODEL.WEIGHTS ""`` a model whose backbone MMSegmentation
    initialises from ImageNet (None when it would not, e.g. the quickstart's narrow ResNet)."""
    name = imagenet_weights_for(cfg)
    if cfg.MODEL.WEIGHTS or name is None:
        return None
    return (f"MODEL.WEIGHTS is empty: training from scratch, where MMSegmentation's configs of this "
            f"model initialise its backbone from ImageNet ({name}) unless they train from scratch "
            f"on purpose (BiSeNetV1 / ICNet without in1k-pre, LR-ASPP scratch); their results "
            f"need it: MODEL.WEIGHTS {name} (docs/checkpoints.md)")
