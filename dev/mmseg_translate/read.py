"""Reading MMSegmentation 0.30's configs, head classes and metafiles (mmseg is a dev-only
dependency: d2seg itself never imports it)."""
import ast
import inspect
import os
import re

from mmseg_peer import mmseg_config_root, stub_mmcv_ext

from .common import TranslationError

# Arguments that some heads pass to BaseDecodeHead themselves (not visible in any signature)
FORCED_HEAD_ARGS = {"UPerHead": {"input_transform": "multiple_select"},
                    "ANNHead": {"input_transform": "multiple_select"}}


def head_defaults(head_type):
    """Every keyword default of an mmseg head class, walking its MRO (subclass wins)."""
    stub_mmcv_ext()
    from mmseg.models.builder import HEADS

    cls = HEADS.get(head_type)
    if cls is None:
        raise TranslationError(f"unknown mmseg head type {head_type!r}")
    out = {}
    for c in reversed(cls.__mro__):
        if "__init__" not in vars(c) or c.__module__.startswith(("torch", "mmcv")):
            continue
        for p in inspect.signature(c.__init__).parameters.values():
            if p.default is not inspect.Parameter.empty:
                out[p.name] = p.default
    out.update(FORCED_HEAD_ARGS.get(head_type, {}))
    return out


def load_mmseg(stem):
    from mmcv import Config

    path = os.path.join(mmseg_config_root(), stem + ".py")
    return Config.fromfile(path)._cfg_dict.to_dict(), path


def mmseg_parent(path):
    """The ``_base_`` of an mmseg config file: ('leaf', stem) or ('model', name); ('model', None)
    for a config that defines its model itself (no model among its bases: the occluded-face
    config, K-Net's), whose parent is then the d2seg base model of its head."""
    tree = ast.parse(open(path).read())
    base = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets):
            base = ast.literal_eval(node.value)
    folder = os.path.basename(os.path.dirname(path))
    if isinstance(base, str) and base.startswith("../_base_/datasets/"):
        base = [base]
    if isinstance(base, list) and len(base) == 1 and not base[0].startswith("../_base_/"):
        base = base[0]  # ['./<leaf>.py'] (SegFormer B1-B5, Swin): that leaf, as a str would
    if isinstance(base, str):
        m = re.fullmatch(r"(?:\./)?([^/]+)\.py", base)  # './<leaf>.py' or '<leaf>.py' (Swin)
        if m:
            return "leaf", f"{folder}/{m[1]}"
        m = re.fullmatch(r"\.\./(\w+)/(.+)\.py", base)  # MobileNetV2's: another folder's leaf
        if not m:
            raise TranslationError(f"{path}: unexpected _base_ {base!r}")
        return "leaf", f"{m[1]}/{m[2]}"
    models = [b for b in base or [] if b.startswith("../_base_/models/")]
    if not models and base and all(b.startswith("../_base_/") for b in base):
        return "model", None
    if len(models) != 1:
        raise TranslationError(f"{path}: expected one ../_base_/models/ in _base_ = {base!r}")
    return "model", os.path.basename(models[0])[:-3]


def metafile(root, folder):
    import yaml

    path = os.path.join(root, folder, f"{folder}.yml")
    with open(path) as f:
        meta = yaml.safe_load(f)
    models = {m["Name"]: m for m in meta["Models"]}
    return (meta.get("Collections") or [{}])[0], models

