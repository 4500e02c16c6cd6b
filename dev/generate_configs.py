#!/usr/bin/env python
"""Generates d2seg's model-zoo configs from MMSegmentation 0.30's own configs (a dev tool).

    python dev/generate_configs.py           # (re)writes configs/<method>/*.yaml and README.md
    python dev/generate_configs.py --check   # exits 1 if a generated file would change

Needs MMSegmentation 0.30 and mmcv 1.x installed (mmseg ships its configs in mmseg/.mim/configs);
d2seg itself never imports them. For every mmseg config of the 13 methods (all 390 but the
few in ``BLOCKED``, which name what d2seg lacks) it:

1. loads the fully merged mmseg config (``mmcv.Config.fromfile``) and translates **every** key
   into d2seg's config (starting from the base model yaml of that architecture); a key it does not
   understand, or a value d2seg cannot express, stops the run with the key's path;
2. finds the yaml parent the way mmseg inherits: a leaf whose ``_base_`` is a list inherits
   ``configs/_base_/models/<model>.yaml``; one whose ``_base_`` is ``./<stem>.py`` (R-101,
   HRNet-W18-Small / W48) inherits that leaf's yaml;
3. loads the parent into a d2seg cfg (get_cfg + add_d2seg_config + merge_from_file) and writes
   only the keys whose translated value differs from it, then reloads the written file and checks
   that it equals the translation, key for key. ``MODEL.WEIGHTS`` is the ImageNet checkpoint
   mmseg's config initialises its backbone from (``open-mmlab://resnet50_v1c``, ...).

It also writes configs/<method>/README.md: mmseg's reported results, read from the metafile
shipped with mmseg (``<method>/<method>.yml``), a d2seg column ("—" until d2seg has trained the
config: ``--d2seg-results FILE`` takes a JSON ``{"<method>/<stem>": mIoU}``) and links.
"""
import argparse
import ast
import inspect
import json
import os
import re
import sys
from collections import OrderedDict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "dev"))
from mmseg_peer import mmseg_config_root, stub_mmcv_ext  # noqa: E402

# mmseg config folder -> method title
METHODS = OrderedDict([
    ("fcn", "FCN"),
    ("pspnet", "PSPNet"),
    ("psanet", "PSANet"),
    ("deeplabv3", "DeepLabV3"),
    ("deeplabv3plus", "DeepLabV3+"),
    ("upernet", "UPerNet"),
    ("hrnet", "HRNet"),
    ("gcnet", "GCNet"),
    ("nonlocal_net", "NonLocal Net"),
    ("ccnet", "CCNet"),
    ("danet", "DANet"),
    ("ann", "ANN"),
    ("ocrnet", "OCRNet"),
])
# mmseg configs that d2seg cannot express yet: stem -> why (the generator reports them; the
# test checks that each still fails, with this reason, so the list cannot go stale)
BLOCKED = {  # stem -> (what the translation stops at, why d2seg cannot run it)
}


def _split(img, ann, split=None):
    return dict(img_dir=img, ann_dir=ann, **({"split": split} if split else {}))


def _dirs(img, ann, train="train", val="val"):
    """<img>/<train>, <ann>/<train> and the same for val (mmseg's convert_datasets layout)."""
    return {"train": _split(f"{img}/{train}", f"{ann}/{train}"),
            "val": _split(f"{img}/{val}", f"{ann}/{val}")}


_VOC_AUG = {"train": _split("JPEGImages", ["SegmentationClass", "SegmentationClassAug"],
                            ["ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/aug.txt"]),
            "val": _split("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/val.txt")}
_CONTEXT = {s: _split("JPEGImages", "SegmentationClassContext",
                      f"ImageSets/SegmentationContext/{s}.txt") for s in ("train", "val")}
_NIGHT = "(Cityscapes models, tested on {})"
# mmseg's occlude_face.py: data.train is a LIST of three sets (mmseg's ConcatDataset), all
# selected by the one train.txt at the data root; no data.test (tested on data.val)
_FACE_TRAIN = ("NatOcc_hand_sot", "NatOcc_object", "RandOcc")
_FACE = {"train": [_split(f"{s}/img", f"{s}/mask", "train.txt") for s in _FACE_TRAIN],
         "val": _split("RealOcc/image", "RealOcc/mask", "RealOcc/split/val.txt")}
# mmseg dataset -> d2seg dataset names and mmseg's data layout (checked); a type with several
# layouts (COCO-Stuff 10k / 164k) is told apart by its train img_dir. Test-only sets (Dark
# Zurich, Nighttime Driving) have no train split: their configs train on Cityscapes.
# key: (mmseg type, title, classes, d2seg train name(s), d2seg test name, layout); a list of
# train names is mmseg's list of train datasets, in its order (Detectron2 concatenates them)
_ROWS = [
    ("cityscapes", "CityscapesDataset", "Cityscapes", 19, "cityscapes_fine_sem_seg_train",
     "cityscapes_fine_sem_seg_val", _dirs("leftImg8bit", "gtFine")),
    ("ade20k", "ADE20KDataset", "ADE20K", 150, "ade20k_sem_seg_raw_train",
     "ade20k_sem_seg_raw_val", _dirs("images", "annotations", "training", "validation")),
    ("voc12aug", "PascalVOCDataset", "Pascal VOC 2012 + Aug", 21, "voc_2012_sem_seg_trainaug",
     "voc_2012_sem_seg_val", _VOC_AUG),
    ("pascal_context", "PascalContextDataset", "Pascal Context", 60,
     "pascal_context_sem_seg_train", "pascal_context_sem_seg_val", _CONTEXT),
    ("pascal_context_59", "PascalContextDataset59", "Pascal Context 59", 59,
     "pascal_context_59_sem_seg_train", "pascal_context_59_sem_seg_val", _CONTEXT),
    ("coco_stuff_10k", "COCOStuffDataset", "COCO-Stuff 10k", 171, "coco_stuff_10k_sem_seg_train",
     "coco_stuff_10k_sem_seg_test", _dirs("images", "annotations", "train2014", "test2014")),
    ("coco_stuff_164k", "COCOStuffDataset", "COCO-Stuff 164k", 171,
     "coco_stuff_164k_sem_seg_train", "coco_stuff_164k_sem_seg_val",
     _dirs("images", "annotations", "train2017", "val2017")),
    ("loveda", "LoveDADataset", "LoveDA", 7, "loveda_sem_seg_train", "loveda_sem_seg_val",
     _dirs("img_dir", "ann_dir")),
    ("potsdam", "PotsdamDataset", "ISPRS Potsdam", 6, "potsdam_sem_seg_train",
     "potsdam_sem_seg_val", _dirs("img_dir", "ann_dir")),
    ("vaihingen", "ISPRSDataset", "ISPRS Vaihingen", 6, "vaihingen_sem_seg_train",
     "vaihingen_sem_seg_val", _dirs("img_dir", "ann_dir")),
    ("isaid", "iSAIDDataset", "iSAID", 16, "isaid_sem_seg_train", "isaid_sem_seg_val",
     _dirs("img_dir", "ann_dir")),
    ("dark_zurich", "DarkZurichDataset", "Dark Zurich " + _NIGHT.format("Dark Zurich val"), 19,
     None, "dark_zurich_sem_seg_val",
     {"val": _split("rgb_anon/val/night/GOPR0356", "gt/val/night/GOPR0356")}),
    ("night_driving", "NightDrivingDataset",
     "Nighttime Driving " + _NIGHT.format("Nighttime Driving test"), 19, None,
     "nighttime_driving_sem_seg_test",
     {"val": _split("leftImg8bit/test/night", "gtCoarse_daytime_trainvaltest/test/night")}),
    ("occlusion_face", "FaceOccludedDataset",
     "Occlusion-aware face (NatOcc hand SOT + NatOcc object + RandOcc, tested on RealOcc)", 2,
     [f"occlusion_face_{s.lower()}_sem_seg_train" for s in _FACE_TRAIN],
     "occlusion_face_realocc_sem_seg_val", _FACE),
]
DATASETS = OrderedDict(
    (key, dict(type=kind, title=title, num_classes=n, train=train, test=test, layout=layout))
    for key, kind, title, n, train, test, layout in _ROWS)


def find_dataset(kind, img_dir, split):
    """The DATASETS key of an mmseg dataset ``type`` whose ``split`` layout has ``img_dir``."""
    keys = [k for k, d in DATASETS.items() if d["type"] == kind and split in d["layout"]]
    if len(keys) > 1:
        keys = [k for k in keys if img_dir in [
            p["img_dir"] for p in _parts(DATASETS[k]["layout"][split])]]
    if len(keys) != 1:
        raise TranslationError(f"dataset {kind!r} (img_dir {img_dir!r}): d2seg has no "
                               "registered dataset for it")
    return keys[0]


def _parts(x):
    """A dataset's train names / layouts as a list (one, or mmseg's list of train sets)."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


# mmseg's ImageNet initialisation (model.pretrained or backbone.init_cfg.checkpoint): the
# schemes d2seg's checkpoint resolver takes (see docs/checkpoints.md)
WEIGHTS_RE = re.compile(r"^(open-mmlab://|torchvision://|https://download\.openmmlab\.com/)\S+$")
GPUS = 4  # "We use distributed training with 4 GPUs by default" (mmseg docs/en/model_zoo.md)

# mmseg decode-head type (+ backbone family: ResNet = ResNetV1c or ResNet) -> d2seg base model yaml
BASE_MODELS = {
    ("ResNet", "FCNHead"): "fcn_r50-d8",
    ("ResNet", "PSPHead"): "pspnet_r50-d8",
    ("ResNet", "PSAHead"): "psanet_r50-d8",
    ("ResNet", "ASPPHead"): "deeplabv3_r50-d8",
    ("ResNet", "DepthwiseSeparableASPPHead"): "deeplabv3plus_r50-d8",
    ("ResNet", "UPerHead"): "upernet_r50",
    ("ResNet", "GCHead"): "gcnet_r50-d8",
    ("ResNet", "NLHead"): "nonlocal_r50-d8",
    ("ResNet", "CCHead"): "ccnet_r50-d8",
    ("ResNet", "DAHead"): "danet_r50-d8",
    ("ResNet", "ANNHead"): "ann_r50-d8",
    ("ResNet", "FCNHead+OCRHead"): "ocrnet_r50-d8",
    ("HRNet", "FCNHead"): "fcn_hr18",
    ("HRNet", "FCNHead+OCRHead"): "ocrnet_hr18",
}

# Decode-head arguments shared by heads: mmseg name -> d2seg key in the head's node
HEAD_ARGS = {
    "channels": "CONVS_DIM",
    "dropout_ratio": "DROPOUT",
    "align_corners": "ALIGN_CORNERS",
    # FCNHead and its subclasses (GC/NL/CC)
    "num_convs": "NUM_CONVS",
    "kernel_size": "KERNEL_SIZE",
    "concat_input": "CONCAT_INPUT",
    "dilation": "DILATION",
}
METHOD_ARGS = {  # per head type: mmseg argument -> absolute d2seg key
    "PSPHead": {"pool_scales": "MODEL.PSP_HEAD.POOL_SCALES"},
    "UPerHead": {"pool_scales": "MODEL.UPER_HEAD.POOL_SCALES"},
    "ASPPHead": {"dilations": "MODEL.ASPP_HEAD.DILATIONS"},
    "DepthwiseSeparableASPPHead": {"dilations": "MODEL.ASPP_HEAD.DILATIONS",
                                   "c1_channels": "MODEL.ASPP_HEAD.C1_CHANNELS"},
    "PSAHead": {"mask_size": "MODEL.PSA_HEAD.MASK_SIZE", "psa_type": "MODEL.PSA_HEAD.PSA_TYPE",
                "compact": "MODEL.PSA_HEAD.COMPACT",
                "shrink_factor": "MODEL.PSA_HEAD.SHRINK_FACTOR",
                "normalization_factor": "MODEL.PSA_HEAD.NORMALIZATION_FACTOR",
                "psa_softmax": "MODEL.PSA_HEAD.PSA_SOFTMAX"},
    "GCHead": {"ratio": "MODEL.GC_HEAD.RATIO", "pooling_type": "MODEL.GC_HEAD.POOLING_TYPE",
               "fusion_types": "MODEL.GC_HEAD.FUSION_TYPES"},
    "NLHead": {"reduction": "MODEL.NL_HEAD.REDUCTION", "use_scale": "MODEL.NL_HEAD.USE_SCALE",
               "mode": "MODEL.NL_HEAD.MODE"},
    "CCHead": {"recurrence": "MODEL.CC_HEAD.RECURRENCE"},
    "DAHead": {"pam_channels": "MODEL.DA_HEAD.PAM_CHANNELS"},
    "ANNHead": {"project_channels": "MODEL.ANN_HEAD.PROJECT_CHANNELS",
                "query_scales": "MODEL.ANN_HEAD.QUERY_SCALES",
                "key_pool_scales": "MODEL.ANN_HEAD.KEY_POOL_SCALES"},
    "OCRHead": {"ocr_channels": "MODEL.OCR_HEAD.OCR_CHANNELS", "scale": "MODEL.OCR_HEAD.SCALE"},
    "FCNHead": {},
}
# Arguments that some heads pass to BaseDecodeHead themselves (not visible in any signature)
FORCED_HEAD_ARGS = {"UPerHead": {"input_transform": "multiple_select"},
                    "ANNHead": {"input_transform": "multiple_select"}}
_BASE_HEAD_INIT = dict(type="Normal", std=0.01, override=dict(name="conv_seg"))


class TranslationError(RuntimeError):
    pass


# ---- reading an mmseg config: every key must be consumed ---------------------------------------
_MISSING = object()


def _norm(v):
    """Tuples as lists (mmseg mixes them freely), recursively."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


class Node:
    """One mmseg config dict whose keys must all be read: ``take`` pops a key, ``node`` wraps a
    sub-dict (whose keys must then be read too), ``expect`` pops and checks a value; ``leftover``
    lists the keys nobody read."""

    def __init__(self, d, path):
        self.d, self.path, self.children = dict(d), path, []

    def _p(self, key):
        return f"{self.path}.{key}" if self.path else key

    def has(self, key):
        return key in self.d

    def take(self, key, default=_MISSING):
        if key not in self.d:
            if default is _MISSING:
                raise TranslationError(f"mmseg key {self._p(key)} is missing")
            return default
        return self.d.pop(key)

    def node(self, key, default=_MISSING):
        v = self.take(key, {} if default is _MISSING else default)
        if not isinstance(v, dict):
            raise TranslationError(f"mmseg key {self._p(key)} = {v!r}: expected a dict")
        child = Node(v, self._p(key))
        self.children.append(child)
        return child

    def items(self):
        """Consumes and returns all remaining (key, value) pairs."""
        out = list(self.d.items())
        self.d.clear()
        return out

    def expect(self, key, value, default=_MISSING):
        v = self.take(key, default)
        if _norm(v) != _norm(value):
            raise TranslationError(
                f"mmseg key {self._p(key)} = {v!r}: d2seg only supports {value!r} here")
        return v

    def leftover(self):
        out = [self._p(k) for k in self.d]
        for c in self.children:
            out += c.leftover()
        return out


# ---- d2seg cfg helpers -----------------------------------------------------------------------
def new_cfg(config_file=None):
    from detectron2.config import get_cfg

    import d2seg

    cfg = get_cfg()
    d2seg.add_d2seg_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    return cfg


def cfg_get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def cfg_set(cfg, key, value):
    """Sets an existing key, coercing the value to the key's type as yacs would require."""
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    if last not in node:
        raise TranslationError(f"d2seg has no config key {key}")
    old = node[last]
    if old is None or value is None:  # an optional key (yacs takes None <-> any type)
        node[last] = value
        return
    if isinstance(old, bool):
        pass
    elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
        value = type(old)(value)
    if not (isinstance(value, type(old)) or (isinstance(old, (list, tuple))
                                             and isinstance(value, (list, tuple)))):
        raise TranslationError(f"{key}: {value!r} does not fit the type of {old!r}")
    node[last] = value


def flatten_cfg(cfg, prefix=""):
    from detectron2.config import CfgNode

    out = OrderedDict()
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, CfgNode):
            out.update(flatten_cfg(v, key + "."))
        else:
            out[key] = v
    return out


# ---- mmseg access ------------------------------------------------------------------------------
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
    for a config that defines its model itself (its only base a dataset file: the occluded-face
    config), whose parent is then the d2seg base model of its head."""
    tree = ast.parse(open(path).read())
    base = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets):
            base = ast.literal_eval(node.value)
    folder = os.path.basename(os.path.dirname(path))
    if isinstance(base, str) and base.startswith("../_base_/datasets/"):
        base = [base]
    if isinstance(base, str):
        m = re.fullmatch(r"\./(.+)\.py", base)
        if not m:
            raise TranslationError(f"{path}: unexpected _base_ {base!r}")
        return "leaf", f"{folder}/{m[1]}"
    models = [b for b in base or [] if b.startswith("../_base_/models/")]
    if not models and base and all(b.startswith("../_base_/datasets/") for b in base):
        return "model", None
    if len(models) != 1:
        raise TranslationError(f"{path}: expected one ../_base_/models/ in _base_ = {base!r}")
    return "model", os.path.basename(models[0])[:-3]


# ---- the translation -------------------------------------------------------------------------
class Translation:
    """The d2seg cfg of one mmseg config, plus facts for comments and READMEs."""

    def __init__(self, stem):
        self.stem = stem
        raw, self.path = load_mmseg(stem)
        self.root = Node(raw, "")
        self.notes = {}  # d2seg key -> comment
        self.facts = {}
        self.translate()
        left = self.root.leftover()
        if left:
            raise TranslationError(f"{stem}: mmseg keys not translated: {', '.join(left)}")

    def set(self, key, value, note=None):
        cfg_set(self.cfg, key, value)
        self.assigned[key] = None
        if note:
            self.notes[key] = note

    # -- model --
    def translate(self):
        r = self.root
        model = r.node("model")
        backbone = model.node("backbone")
        btype = backbone.take("type")
        decode = model.take("decode_head")
        if model.take("type") == "CascadeEncoderDecoder":
            model.expect("num_stages", 2)
            if not isinstance(decode, list) or len(decode) != 2:
                raise TranslationError(f"{self.stem}: cascade needs 2 decode heads")
            heads = [Node(d, f"model.decode_head[{i}]") for i, d in enumerate(decode)]
            head_key = "+".join(h.d["type"] for h in heads)
            arch = "CascadeEncoderDecoder"
        else:
            heads = [Node(decode, "model.decode_head")]
            head_key = decode["type"]
            arch = "EncoderDecoder"
        self.root.children += heads
        family = "ResNet" if btype in ("ResNetV1c", "ResNet") else btype
        if (family, head_key) not in BASE_MODELS:
            raise TranslationError(f"{self.stem}: no d2seg base model for {btype} + {head_key}")
        self.base_model = BASE_MODELS[(family, head_key)]
        self.cfg = new_cfg(os.path.join(REPO, "configs/_base_/models", self.base_model + ".yaml"))
        self.assigned = OrderedDict()
        self.set("MODEL.META_ARCHITECTURE", arch)

        if family == "ResNet":
            channels = self.resnet(backbone, btype)
        else:
            channels = self.hrnet(backbone)
        self.init_weights(model.take("pretrained"), backbone.node("init_cfg", {}))
        model.expect("train_cfg", {}, {})
        test_cfg = model.node("test_cfg")
        mode = test_cfg.take("mode")
        self.set("TEST.MODE", mode)
        if mode == "slide":
            self.set("TEST.CROP_SIZE", list(test_cfg.take("crop_size")))
            self.set("TEST.STRIDE", list(test_cfg.take("stride")))
        elif mode != "whole":
            raise TranslationError(f"{self.stem}: test mode {mode!r}")

        self.num_classes = set()
        self.ignore = set()
        nodes = ["MODEL.CASCADE_HEAD", "MODEL.SEM_SEG_HEAD"] if len(heads) == 2 else [
            "MODEL.SEM_SEG_HEAD"]
        for head, node in zip(heads, nodes):
            self.head(head, node, channels)
        aux = model.take("auxiliary_head", None)
        if aux is None:
            self.set("MODEL.AUX_HEAD.NAME", "")
        elif isinstance(aux, dict):
            n = Node(aux, "model.auxiliary_head")
            self.root.children.append(n)
            self.head(n, "MODEL.AUX_HEAD", channels)
        else:
            raise TranslationError(f"{self.stem}: d2seg has one auxiliary head, got {aux!r}")
        if len(self.num_classes) != 1 or len(self.ignore) != 1:
            raise TranslationError(f"{self.stem}: heads disagree on num_classes/ignore_index")
        self.set("MODEL.SEM_SEG_HEAD.NUM_CLASSES", self.num_classes.pop())
        self.set("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", self.ignore.pop())
        self.data()
        self.schedule()
        # variables of the config files, already checked through the values they fed
        r.take("norm_cfg", None)
        r.take("img_norm_cfg")
        r.take("crop_size")
        r.take("img_scale", None)  # Pascal Context's dataset file names its scale
        r.take("dataset_type")
        r.take("data_root")
        # the occluded-face dataset file builds data.train's list and data.val from these
        for k in [k for k in r.d if re.fullmatch(r"dataset_(train_[A-Z]|valid)", k)]:
            if not any(_same(r.d[k], d) for d in self.facts["data_dicts"]):
                raise TranslationError(f"{self.stem}: variable {k} is none of data's datasets")
            r.take(k)
        # the rsb-pretrain configs name their backbone's init_cfg.checkpoint by this variable
        if r.take("checkpoint", self.facts["pretrained"]) != self.facts["pretrained"]:
            raise TranslationError(f"{self.stem}: `checkpoint` is not the backbone's init_cfg")

    def init_weights(self, pretrained, init):
        """MODEL.WEIGHTS: the ImageNet checkpoint mmseg's backbone starts from."""
        weights = pretrained
        if init.d:
            # LoveDA's R-18/101 and HRNet-W18-Small/W48 configs override their parent's
            # `pretrained` with backbone.init_cfg (mmseg asserts that not both are set: the
            # init_cfg is the checkpoint meant, the one of this backbone)
            init.expect("type", "Pretrained")
            init.expect("prefix", "backbone.", "backbone.")
            weights = init.take("checkpoint")
        if weights is None:
            weights = ""
        elif not WEIGHTS_RE.match(weights):
            raise TranslationError(f"{self.stem}: backbone weights {weights!r}: not an "
                                   "open-mmlab://, torchvision:// or download.openmmlab.com name")
        self.set("MODEL.WEIGHTS", weights, "mmseg's backbone init (ImageNet); \"\" = from scratch")
        self.facts["pretrained"] = weights

    def norm(self, node, key):
        n = node.node(key)
        kind = n.take("type")
        n.expect("requires_grad", True)
        if kind not in ("SyncBN", "BN", "GN"):
            raise TranslationError(f"{n.path}: norm {kind!r}")
        return kind

    def resnet(self, b, btype):
        depth = b.take("depth")
        self.facts["backbone_id"] = depth
        self.set("MODEL.BACKBONE.NAME", "build_dilated_resnet_backbone")
        self.set("MODEL.BACKBONE.FREEZE_AT", 0)  # norm_eval=False, frozen_stages=-1
        self.set("MODEL.RESNETS.DEPTH", depth)
        # ResNetV1c: deep stem (3 x conv3x3); ResNet (V1b, torchvision's layout): 7x7 conv
        self.set("MODEL.RESNETS.STEM_TYPE", "deeplab" if btype == "ResNetV1c" else "basic")
        b.expect("num_stages", 4)
        dilations, strides = list(b.take("dilations")), list(b.take("strides"))
        self.set("MODEL.RESNETS.STAGE_DILATIONS", dilations)
        self.set("MODEL.RESNETS.STAGE_STRIDES", strides)
        self.set("MODEL.RESNETS.CONTRACT_DILATION", b.take("contract_dilation"))
        grid = list(b.take("multi_grid", None) or [])
        self.set("MODEL.RESNETS.RES5_DILATION_PER_BLOCK", grid)
        style = b.take("style")
        if style not in ("pytorch", "caffe"):
            raise TranslationError(f"{self.stem}: ResNet style {style!r}")
        self.set("MODEL.RESNETS.STRIDE_IN_1X1", style == "caffe")
        self.set("MODEL.RESNETS.NORM", self.norm(b, "norm_cfg"))
        b.expect("norm_eval", False)
        out = ["res2", "res3", "res4", "res5"]
        idx = list(b.take("out_indices"))
        self.set("MODEL.RESNETS.OUT_FEATURES", [out[i] for i in idx])
        expansion = 4 if depth >= 50 else 1  # Bottleneck / BasicBlock
        base = 64 * expansion  # mmseg's defaults: stem_channels=base_channels=64
        self.set("MODEL.RESNETS.RES2_OUT_CHANNELS", base)
        # mmseg's names: R-50-D8 (output stride 8, dilated), R-50b (V1b), R-101-D16-MG124
        os_ = 4
        for stride in strides:
            os_ *= stride
        name = f"R-{depth}" + ("b" if btype == "ResNet" else "")
        if set(dilations) != {1}:
            name += f"-D{os_}"
        if grid:
            name += "-MG" + "".join(map(str, grid))
        self.facts["backbone"] = name
        self.facts["backbone_rank"] = (0, depth, btype == "ResNet", os_, len(grid))
        return {f: base * 2 ** i for i, f in enumerate(out) if i in idx}

    def hrnet(self, b):
        extra = b.node("extra")
        stages = [extra.node(f"stage{i}") for i in range(1, 5)]
        modules, blocks = [], []
        for i, s in enumerate(stages):
            s.expect("num_branches", i + 1)
            s.expect("block", "BOTTLENECK" if i == 0 else "BASIC")
            modules.append(s.take("num_modules"))
            nb = list(s.take("num_blocks"))
            if len(set(nb)) != 1:
                raise TranslationError(f"{s.path}.num_blocks={nb}: d2seg needs equal branches")
            blocks.append(nb[0])
            s.channels = list(s.take("num_channels"))
        widths = stages[3].channels
        for i in (1, 2):
            if stages[i].channels != widths[: i + 1]:
                raise TranslationError(f"{stages[i].path}.num_channels != a prefix of stage4's")
        self.set("MODEL.BACKBONE.NAME", "build_hrnet_backbone")
        self.set("MODEL.HRNET.STAGE1_CHANNELS", stages[0].channels[0])
        self.set("MODEL.HRNET.BRANCH_CHANNELS", widths)
        self.set("MODEL.HRNET.NUM_MODULES", modules)
        self.set("MODEL.HRNET.NUM_BLOCKS", blocks)
        self.set("MODEL.HRNET.NORM", self.norm(b, "norm_cfg"))
        b.expect("norm_eval", False)
        bid = {18: "W18", 48: "W48"}[widths[0]]
        if bid == "W18" and blocks == [2, 2, 2, 2]:
            bid = "W18-Small"
        self.facts["backbone_id"] = bid
        self.facts["backbone"] = f"HRNetV2p-{bid}"
        self.facts["backbone_rank"] = (1, ["W18-Small", "W18", "W48"].index(bid))
        names = [f"hr{i + 1}" for i in range(4)]
        self.set("MODEL.HRNET.OUT_FEATURES", names)
        return dict(zip(names, widths))

    def head(self, h, node, channels):
        htype = h.take("type")
        self.set(f"{node}.NAME", htype)
        if htype not in METHOD_ARGS:
            raise TranslationError(f"{h.path}: d2seg has no {htype}")
        args = head_defaults(htype)
        args.update(h.items())  # the config's arguments over the class defaults
        features = list(channels)
        # inputs
        index = args.pop("in_index")
        transform = args.pop("input_transform") or ""
        if isinstance(index, (list, tuple)):
            names = [features[i] for i in index]
            if transform not in ("resize_concat", "multiple_select"):
                raise TranslationError(f"{h.path}: in_index {index} with {transform!r}")
        else:
            names = [features[index]]
            if transform:
                raise TranslationError(f"{h.path}: single in_index with {transform!r}")
        in_ch = args.pop("in_channels")
        want = [channels[n] for n in names]
        if _norm(in_ch) != (want if isinstance(index, (list, tuple)) else want[0]):
            raise TranslationError(f"{h.path}.in_channels={in_ch}, backbone gives {want}")
        self.set(f"{node}.IN_FEATURES", names)
        self.set(f"{node}.INPUT_TRANSFORM", transform)
        # shared arguments
        num_classes = args.pop("num_classes")
        self.num_classes.add(num_classes)
        self.ignore.add(args.pop("ignore_index"))
        norm = args.pop("norm_cfg")
        if not norm or norm.get("requires_grad") is not True or set(norm) != {
                "type", "requires_grad"}:
            raise TranslationError(f"{h.path}.norm_cfg={norm!r}: d2seg takes a trainable norm "
                                   "type only")
        self.set(f"{node}.NORM", norm["type"])
        loss = args.pop("loss_decode")
        if not isinstance(loss, dict) or loss.get("type") != "CrossEntropyLoss":
            raise TranslationError(f"{h.path}.loss_decode={loss!r}: d2seg has cross-entropy")
        loss = {k: v for k, v in loss.items() if k != "type"}
        for k, v in dict(use_sigmoid=False, use_mask=False, reduction="mean",
                         loss_name="loss_ce").items():
            if loss.pop(k, v) != v:
                raise TranslationError(f"{h.path}.loss_decode.{k}: only {v!r} is supported")
        self.set(f"{node}.LOSS_WEIGHT", loss.pop("loss_weight", 1.0))
        cw = loss.pop("class_weight", None)
        if cw is not None and not isinstance(cw, (list, tuple)):
            raise TranslationError(f"{h.path}.loss_decode.class_weight={cw!r}: give a list")
        self.set(f"{node}.CLASS_WEIGHT", list(cw or []))
        self.set(f"{node}.LOSS_AVG_NON_IGNORE", loss.pop("avg_non_ignore", False))
        if loss:
            raise TranslationError(f"{h.path}.loss_decode: unknown {sorted(loss)}")
        if args.pop("out_channels", None) not in (None, num_classes):
            raise TranslationError(f"{h.path}.out_channels: d2seg has num_classes outputs")
        sampler = args.pop("sampler", None)
        if sampler is not None:  # mmseg's OHEMPixelSampler (DeepLabV3(+) D16-MG124)
            sampler = Node(sampler, f"{h.path}.sampler")
            self.root.children.append(sampler)
            sampler.expect("type", "OHEMPixelSampler")
            self.set(f"{node}.OHEM_THRESH", sampler.take("thresh", None))
            self.set(f"{node}.OHEM_MIN_KEPT", sampler.take("min_kept", 100000))
        for k, v in dict(threshold=None, conv_cfg=None, act_cfg=dict(type="ReLU"),
                         init_cfg=_BASE_HEAD_INIT).items():
            if _norm(args.pop(k, v)) != _norm(v):
                raise TranslationError(f"{h.path}.{k}: d2seg only supports {v!r}")
        if args.get("c1_in_channels") is not None:
            c1 = args.pop("c1_in_channels")
            feat = features[0]  # mmseg: inputs[0], the first backbone output
            if channels[feat] != c1:
                raise TranslationError(f"{h.path}.c1_in_channels={c1}, {feat} has {channels[feat]}")
            self.set("MODEL.ASPP_HEAD.C1_IN_FEATURE", feat)
        for k in list(args):
            if k in HEAD_ARGS:
                self.set(f"{node}.{HEAD_ARGS[k]}", _plain(args.pop(k)))
            elif k in METHOD_ARGS[htype]:
                self.set(METHOD_ARGS[htype][k], _plain(args.pop(k)))
        if args:
            raise TranslationError(f"{h.path} ({htype}): not translated: {sorted(args)}")
        if htype == "PSAHead":
            self.facts["mask_size"] = list(cfg_get(self.cfg, "MODEL.PSA_HEAD.MASK_SIZE"))

    # -- data --
    def data(self):
        r = self.root
        data = r.node("data")
        gpus = GPUS
        m = re.search(r"_b(\d+)_", self.stem)
        per_gpu = data.take("samples_per_gpu")
        if m:  # e.g. OCRNet's _b16_: 8 GPUs x 2
            if int(m[1]) % per_gpu:
                raise TranslationError(f"{self.stem}: batch {m[1]} vs samples_per_gpu {per_gpu}")
            gpus = int(m[1]) // per_gpu
        self.facts["gpus"], self.facts["per_gpu"] = gpus, per_gpu
        self.set("SOLVER.IMS_PER_BATCH", per_gpu * gpus,
                 f"mmseg: {gpus} GPUs x {per_gpu} images (samples_per_gpu)")
        self.set("DATALOADER.NUM_WORKERS", data.take("workers_per_gpu"))
        parts = {}  # data.<name> -> its Nodes (data.train may be mmseg's list of datasets)
        for name in ("train", "val", "test"):
            if name == "test" and not data.has("test"):
                continue  # the occluded-face config: tested on data.val (mmseg's EvalHook)
            v = data.take(name)
            many = isinstance(v, (list, tuple))
            if many and name != "train":
                raise TranslationError(f"{self.stem}: data.{name} is a list: d2seg tests one set")
            parts[name] = []
            self.facts.setdefault("data_dicts", []).extend(v if many else [v])
            for i, d in enumerate(v if many else [v]):
                path = f"data.{name}[{i}]" if many else f"data.{name}"
                if not isinstance(d, dict):
                    raise TranslationError(f"mmseg key {path} = {d!r}: expected a dict")
                parts[name].append(Node(d, path))
                data.children.append(parts[name][-1])
        keys = {}
        for name, nodes in parts.items():
            layout = "train" if name == "train" else "val"
            found = {find_dataset(n.take("type"), n.d.get("img_dir"), layout) for n in nodes}
            if len(found) != 1:
                raise TranslationError(f"{self.stem}: data.{name} mixes datasets {sorted(found)}")
            keys[name] = key = found.pop()
            want = _parts(DATASETS[key]["layout"][layout])
            if len(want) != len(nodes):
                raise TranslationError(f"{self.stem}: data.{name} has {len(nodes)} dataset(s), "
                                       f"d2seg's {key} {layout} has {len(want)}")
            for n, w in zip(nodes, want):  # mmseg's list order = DATASETS.TRAIN's order
                n.take("data_root")  # d2seg: $DETECTRON2_DATASETS (see docs/datasets.md)
                for k in ("img_dir", "ann_dir", "split"):
                    if k in w or n.has(k):
                        n.expect(k, w.get(k))
                n.reduce = n.take("reduce_zero_label", None)  # checked below
            if DATASETS[key]["num_classes"] != self.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
                raise TranslationError(f"{self.stem}: heads predict "
                                       f"{self.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} classes, "
                                       f"data.{name} ({key}) has {DATASETS[key]['num_classes']}")
        if keys["val"] != keys["train"]:
            raise TranslationError(f"{self.stem}: data.val is {keys['val']}, data.train "
                                   f"{keys['train']}: d2seg evaluates the train set's val split")
        no_test = "test" not in keys
        keys.setdefault("test", keys["val"])
        self.facts["dataset"] = keys["test"]
        self.set("DATASETS.TRAIN", tuple(_parts(DATASETS[keys["train"]]["train"])),
                 "mmseg's list of train sets, concatenated" if len(parts["train"]) > 1 else None)
        note = None
        if keys["test"] != keys["train"]:  # a test-only set (Dark Zurich, Nighttime Driving)
            note = (f"mmseg's data.test; mmseg evaluates data.val "
                    f"({DATASETS[keys['val']]['test']}) while training: use --eval-only")
        elif no_test:
            note = "mmseg's data.val (the config has no data.test)"
        self.set("DATASETS.TEST", (DATASETS[keys["test"]]["test"],), note)

        train = r.take("train_pipeline")
        for n in parts["train"]:
            if _norm(n.take("pipeline")) != _norm(train):
                raise TranslationError(f"{self.stem}: {n.path}.pipeline != train_pipeline")
        test = r.take("test_pipeline")
        for n in parts.get("test", []):
            if _norm(n.take("pipeline")) != _norm(test):
                raise TranslationError(f"{self.stem}: data.test.pipeline != test_pipeline")
        val = parts["val"][0].take("pipeline")
        if keys["test"] == keys["val"] and _norm(val) != _norm(test):
            raise TranslationError(f"{self.stem}: data.val.pipeline != test_pipeline")
        self.train_pipeline(train)
        self.test_pipeline(test)
        # COCO-Stuff 10k also passes reduce_zero_label to the dataset (for evaluation)
        for n in sum(parts.values(), []):
            if n.reduce not in (None, self.cfg.INPUT.REDUCE_ZERO_LABEL):
                raise TranslationError(f"{self.stem}: {n.path}.reduce_zero_label="
                                       f"{n.reduce} but LoadAnnotations says "
                                       f"{self.cfg.INPUT.REDUCE_ZERO_LABEL}")

    def steps(self, pipeline, path, kinds):
        if [s.get("type") for s in pipeline] != kinds:
            raise TranslationError(f"{self.stem}: {path} = {[s.get('type') for s in pipeline]}, "
                                   f"d2seg implements {kinds}")
        out = []
        for i, s in enumerate(pipeline):
            n = Node(s, f"{path}[{i}]")
            n.take("type")
            self.root.children.append(n)
            out.append(n)
        return out

    def normalize(self, n):
        self.set("MODEL.PIXEL_MEAN", list(n.take("mean")))
        self.set("MODEL.PIXEL_STD", list(n.take("std")))
        self.set("INPUT.FORMAT", "RGB" if n.take("to_rgb") else "BGR")

    # mmseg's train pipeline, in this order; the steps in _OPTIONAL may be left out
    _TRAIN_STEPS = ["LoadImageFromFile", "LoadAnnotations", "Resize", "RandomCrop", "RandomFlip",
                    "RandomRotate", "PhotoMetricDistortion", "Normalize", "Pad",
                    "DefaultFormatBundle", "Collect"]
    _TEST_STEPS = ["Resize", "ResizeToMultiple", "RandomFlip", "Normalize", "ImageToTensor",
                   "Collect"]
    _OPTIONAL = {"RandomCrop", "RandomRotate", "Pad", "ResizeToMultiple"}

    def optional_steps(self, p, path, kinds):
        """{type: Node} of ``p``, whose steps must be ``kinds`` less some of _OPTIONAL."""
        have = {s.get("type") for s in p}
        want = [k for k in kinds if k not in self._OPTIONAL or k in have]
        return dict(zip(want, self.steps(p, path, want)))

    def train_pipeline(self, p):
        # steps without arguments (LoadImageFromFile, PhotoMetricDistortion, ...) must keep
        # mmseg's defaults: any argument given is left unread and fails the translation
        s = self.optional_steps(p, "train_pipeline", self._TRAIN_STEPS)
        ann, resize, flip, norm = s["LoadAnnotations"], s["Resize"], s["RandomFlip"], s["Normalize"]
        self.set("INPUT.REDUCE_ZERO_LABEL", ann.take("reduce_zero_label", False),
                 "mmseg LoadAnnotations(reduce_zero_label): 0 -> 255, k -> k-1"
                 if ann.d.get("reduce_zero_label") else None)
        self.set("INPUT.IMG_SCALE", list(resize.take("img_scale")))
        ratio = resize.take("ratio_range", None)
        self.set("INPUT.RATIO_RANGE", list(ratio) if ratio else [],
                 None if ratio else "mmseg's Resize without ratio_range: IMG_SCALE itself")
        resize.expect("keep_ratio", True, True)
        if ("RandomCrop" in s) != ("Pad" in s):  # d2seg pads batches to the crop
            raise TranslationError(f"{self.stem}: train_pipeline has RandomCrop without Pad or "
                                   "Pad without RandomCrop")
        if "RandomCrop" in s:
            crop, pad = s["RandomCrop"], s["Pad"]
            crop_size = list(crop.take("crop_size"))
            self.set("INPUT.CROP.ENABLED", True)
            self.set("INPUT.CROP.TYPE", "absolute")
            self.set("INPUT.CROP.SIZE", crop_size)
            self.set("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", crop.take("cat_max_ratio"))
            crop.expect("ignore_index", 255, 255)
            pad.expect("size", crop_size)  # d2seg pads training batches to INPUT.CROP.SIZE
            pad.expect("pad_val", 0)
            pad.expect("seg_pad_val", 255)
            self.facts["crop"] = crop_size
        else:  # variable sizes: mmseg's collate pads each batch (image 0, label 255), as d2seg's
            self.set("INPUT.CROP.ENABLED", False, "mmseg: no RandomCrop; batches padded to "
                     "their largest image (image 0, label 255)")
            self.facts["crop"] = None
        flip.expect("prob", 0.5)
        flip.expect("direction", "horizontal", "horizontal")
        self.set("INPUT.RANDOM_FLIP", "horizontal")
        if "RandomRotate" in s:
            rot = s["RandomRotate"]
            degree = rot.take("degree")
            if isinstance(degree, (int, float)):  # mmseg: d means (-d, d)
                degree = (-degree, degree)
            self.set("INPUT.ROTATE.PROB", float(rot.take("prob")), "mmseg's RandomRotate")
            self.set("INPUT.ROTATE.DEGREE", [float(d) for d in degree])
            self.set("INPUT.ROTATE.PAD_VALUE", rot.take("pad_val", 0))
            self.set("INPUT.ROTATE.SEG_PAD_VALUE", rot.take("seg_pad_val", 255))
            rot.expect("center", None, None)
            rot.expect("auto_bound", False, False)
        else:
            self.set("INPUT.ROTATE.PROB", 0.0)
        self.set("INPUT.PHOTOMETRIC_DISTORTION", True)  # mmseg's defaults, see mappers
        self.normalize(norm)
        s["Collect"].expect("keys", ["img", "gt_semantic_seg"])

    def test_pipeline(self, p):
        _, aug = self.steps(p, "test_pipeline", ["LoadImageFromFile", "MultiScaleFlipAug"])
        self.set("INPUT.TEST_IMG_SCALE", list(aug.take("img_scale")))
        flip = aug.take("flip", False)
        aug.expect("flip_direction", "horizontal", "horizontal")
        ratios = aug.take("img_ratios", None)
        if isinstance(ratios, (int, float)):
            ratios = [ratios]
        views = len(ratios or [1.0]) * (2 if flip else 1)
        if ratios is not None and views == 1:
            raise TranslationError(f"{self.stem}: test img_ratios={ratios} without flip: one "
                                   "rescaled view (d2seg: set INPUT.TEST_IMG_SCALE)")
        if views > 1:  # mmseg's test itself is aug_test: d2seg's TTA is then every test
            self.set("TEST.AUG.ENABLED", True, "mmseg's test_pipeline: MultiScaleFlipAug with "
                     "several views, so mmseg's every evaluation is aug_test")
            self.set("TEST.AUG.RATIOS", [float(x) for x in ratios or [1.0]])
            self.set("TEST.AUG.FLIP", bool(flip))
            self.set("TEST.AUG.ALWAYS", True)
        s = self.optional_steps(aug.take("transforms"), "test_pipeline[1].transforms",
                                self._TEST_STEPS)
        resize, norm = s["Resize"], s["Normalize"]
        resize.expect("keep_ratio", True)
        if "ResizeToMultiple" in s:
            s["ResizeToMultiple"].expect("interpolation", None, None)
            self.set("INPUT.TEST_SIZE_DIVISOR", s["ResizeToMultiple"].take("size_divisor", 32),
                     "mmseg's ResizeToMultiple after the test resize")
        s["ImageToTensor"].expect("keys", ["img"])
        s["Collect"].expect("keys", ["img"])
        mean, std = list(self.cfg.MODEL.PIXEL_MEAN), list(self.cfg.MODEL.PIXEL_STD)
        norm.expect("mean", mean)
        norm.expect("std", std)
        norm.expect("to_rgb", self.cfg.INPUT.FORMAT == "RGB")

    # -- optimiser, schedule, runtime --
    def amp(self, r):
        """mmseg's fp16 configs: ``fp16 = dict()`` + ``Fp16OptimizerHook(loss_scale=512.)``."""
        fp16 = r.take("fp16", None)
        if fp16 is None:
            hook = r.node("optimizer_config")
            clip = hook.take("grad_clip", None)
            if clip is not None:  # mmcv's OptimizerHook: one norm over the whole model
                clip = Node(clip, "optimizer_config.grad_clip")
                hook.children.append(clip)
                self.set("SOLVER.CLIP_GRADIENTS.ENABLED", True)
                self.set("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
                         "mmcv's OptimizerHook grad_clip: the norm of all gradients together")
                self.set("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", float(clip.take("max_norm")))
                self.set("SOLVER.CLIP_GRADIENTS.NORM_TYPE", float(clip.take("norm_type", 2)))
            self.set("SOLVER.AMP.ENABLED", False)
            return
        if fp16 != {}:
            raise TranslationError(f"{self.stem}: fp16 = {fp16!r}: d2seg only supports dict()")
        hook = r.node("optimizer_config")
        hook.expect("type", "Fp16OptimizerHook")
        # mmcv keeps the scale at 512 (GradScaler.update(512.) every step, still skipping
        # steps with inf/nan gradients): SOLVER.AMP.LOSS_SCALE does the same
        scale = hook.take("loss_scale")
        if not isinstance(scale, float) or scale <= 0:
            raise TranslationError(f"{self.stem}: optimizer_config.loss_scale={scale!r}: d2seg "
                                   "has static float scales")
        self.set("SOLVER.AMP.ENABLED", True,
                 "mmseg's fp16 (Fp16OptimizerHook): autocast in float16")
        self.set("SOLVER.AMP.DTYPE", "float16")
        self.set("SOLVER.AMP.LOSS_SCALE", scale, "static, as mmcv's Fp16OptimizerHook")
        self.facts["fp16"] = True

    def schedule(self):
        r = self.root
        opt = r.node("optimizer")
        kind = opt.take("type")
        if kind not in ("SGD", "AdamW"):
            raise TranslationError(f"{self.stem}: optimizer.type={kind!r}: d2seg has SGD, AdamW")
        self.set("SOLVER.OPTIMIZER", kind)
        self.set("SOLVER.BASE_LR", opt.take("lr"))
        if kind == "SGD":
            self.set("SOLVER.MOMENTUM", opt.take("momentum"))
        else:  # torch's defaults, which mmcv passes on
            self.set("SOLVER.BETAS", list(opt.take("betas", (0.9, 0.999))))
            self.set("SOLVER.EPS", opt.take("eps", 1e-8))
        wd = opt.take("weight_decay")
        self.set("SOLVER.WEIGHT_DECAY", wd)
        self.set("SOLVER.WEIGHT_DECAY_NORM", wd)  # no paramwise_cfg: norms decay too
        self.amp(r)
        lr = r.node("lr_config")
        lr.expect("by_epoch", False)
        policy = lr.take("policy")
        if policy == "poly":
            self.set("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR")
            self.set("SOLVER.POLY_LR_POWER", lr.take("power"))
            self.set("SOLVER.POLY_LR_MIN_LR", lr.take("min_lr"))
        elif policy == "step":  # Detectron2's multi-step schedule: the same factors as mmcv's
            self.set("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR")
            self.set("SOLVER.STEPS", list(lr.take("step")))
            self.set("SOLVER.GAMMA", lr.take("gamma", 0.1))
            lr.expect("min_lr", None, None)
        else:
            raise TranslationError(f"{self.stem}: lr_config.policy={policy!r}: d2seg has poly "
                                   "and step")
        warmup = lr.take("warmup", None)
        if warmup is None:
            self.set("SOLVER.WARMUP_ITERS", 0)
        elif warmup == "linear":  # mmcv: lr * (1 - (1 - i / iters) * (1 - ratio)), as d2's
            if policy != "step":  # d2's warm-up ends at the schedule's value at warmup_iters
                raise TranslationError(f"{self.stem}: warm-up on a {policy} schedule")
            self.set("SOLVER.WARMUP_METHOD", "linear")
            self.set("SOLVER.WARMUP_ITERS", lr.take("warmup_iters"))
            self.set("SOLVER.WARMUP_FACTOR", lr.take("warmup_ratio"))
        else:
            raise TranslationError(f"{self.stem}: lr_config.warmup={warmup!r}: d2seg has linear")
        runner = r.node("runner")
        runner.expect("type", "IterBasedRunner")
        self.set("SOLVER.MAX_ITER", runner.take("max_iters"))
        ckpt = r.node("checkpoint_config")
        ckpt.expect("by_epoch", False)
        self.set("SOLVER.CHECKPOINT_PERIOD", ckpt.take("interval"))
        ev = r.node("evaluation")
        self.set("TEST.EVAL_PERIOD", ev.take("interval"))
        metric = ev.take("metric")
        metric = [metric] if isinstance(metric, str) else list(metric)
        if "mIoU" not in metric or any(m not in ("mIoU", "mDice", "mFscore") for m in metric):
            raise TranslationError(f"{self.stem}: evaluation.metric={metric}: d2seg reports mIoU "
                                   "and adds mDice, mFscore")
        self.set("TEST.METRICS", metric, "mmseg's evaluation.metric" if metric != ["mIoU"]
                 else None)
        ev.take("pre_eval", None)  # memory-saving evaluation; d2seg accumulates histograms
        self.set("CUDNN_BENCHMARK", r.take("cudnn_benchmark"))
        # Runtime settings Detectron2 fixes itself (its writers log every 20 iterations,
        # launch() uses NCCL on GPUs, MODEL.WEIGHTS / --resume replace load_from / resume_from).
        log = r.node("log_config")
        log.take("interval")
        log.expect("hooks", [dict(type="TextLoggerHook", by_epoch=False)])
        r.expect("dist_params", dict(backend="nccl"))
        r.expect("log_level", "INFO")
        r.expect("load_from", None)
        r.expect("resume_from", None)
        r.expect("workflow", [("train", 1)])
        r.expect("auto_resume", False, False)  # --resume decides in Detectron2


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


# ---- writing yamls ---------------------------------------------------------------------------
def _fmt(key, v):
    if key.startswith("DATASETS.") and isinstance(v, (list, tuple)):
        return "(" + "".join(json.dumps(x) + "," for x in v) + ")"
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(key, x) for x in v) + "]"
    raise TypeError(f"{key}: cannot write {v!r}")


def dump_keys(items, notes):
    """Nested yaml of dotted (key, value) pairs; siblings keep their first-seen order."""
    tree = OrderedDict()
    for key, v in items:
        node = tree
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, OrderedDict())
        node[key.split(".")[-1]] = (key, v)

    def emit(node, depth):
        for name, v in node.items():
            if isinstance(v, OrderedDict):
                yield "  " * depth + name + ":"
                yield from emit(v, depth + 1)
            else:
                key, value = v
                line = "  " * depth + f"{name}: {_fmt(key, value)}"
                yield line + (f"  # {notes[key]}" if key in notes else "")
    return list(emit(tree, 0))


def _same(a, b):
    return _norm(a) == _norm(b)


# Keys every leaf of a base model writes even where they equal a default: the recipe that mmseg's
# dataset and schedule files set (d2seg/Detectron2 defaults may coincide with them by chance).
RECIPE_KEYS = [
    "DATASETS.TRAIN", "DATASETS.TEST", "INPUT.IMG_SCALE", "INPUT.CROP.SIZE",
    "INPUT.TEST_IMG_SCALE", "SOLVER.IMS_PER_BATCH", "SOLVER.MAX_ITER",
    "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
]
_TOP = ["MODEL", "DATASETS", "INPUT", "DATALOADER", "SOLVER", "TEST"]


def _key_rank(assigned):
    order = {k: i for i, k in enumerate(assigned)}

    def rank(key):
        top = key.split(".")[0]
        return (_TOP.index(top) if top in _TOP else len(_TOP), order[key])
    return rank


def folder_of(stem):
    return stem.split("/")[0]


class Generator:
    """Translates stems (parents first) into yaml texts, kept in memory until main writes them."""

    def __init__(self):
        self.done = {}  # stem -> Translation
        self.texts = {}  # path under configs/ -> text

    def close(self):
        import shutil

        if hasattr(self, "_tmp"):
            shutil.rmtree(self._tmp, ignore_errors=True)

    def parent_cfg(self, kind, name):
        if kind == "model":
            path = os.path.join(REPO, "configs/_base_/models", name + ".yaml")
            if not os.path.exists(path):
                raise TranslationError(f"missing configs/_base_/models/{name}.yaml")
            return new_cfg(path)
        self.generate(name)
        return self.load_generated(name)

    def load_generated(self, stem):
        """Loads a generated leaf through its text (works before the files are written)."""
        # _BASE_ paths are relative: write the chain into a scratch copy of configs/
        tmp = self._scratch()
        return new_cfg(os.path.join(tmp, stem + ".yaml"))

    def _scratch(self):
        import shutil
        import tempfile

        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.mkdtemp(prefix="d2seg_gen_")
            shutil.copytree(os.path.join(REPO, "configs/_base_"),
                            os.path.join(self._tmp, "_base_"))
        for rel, text in self.texts.items():
            p = os.path.join(self._tmp, rel)
            if not os.path.exists(p):
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "w") as f:
                    f.write(text)
        return self._tmp

    def generate(self, stem):
        if stem in self.done:
            return self.done[stem]
        t = Translation(stem)
        kind, name = mmseg_parent(t.path)
        if kind == "model" and name is None:  # the model is in the leaf itself
            name = t.base_model
        if kind == "model" and name != t.base_model:
            raise TranslationError(f"{stem}: mmseg base {name} but d2seg base {t.base_model}")
        parent = self.parent_cfg(kind, name)
        full = flatten_cfg(t.cfg)
        old = flatten_cfg(parent)
        explicit = set(RECIPE_KEYS) if kind == "model" else set()
        if kind == "model" and t.cfg.TEST.MODE == "slide":
            explicit |= {"TEST.CROP_SIZE", "TEST.STRIDE"}
        if kind == "model" and t.cfg.TEST.AUG.ALWAYS:  # the views of mmseg's test, spelt out
            explicit |= {"TEST.AUG.RATIOS", "TEST.AUG.FLIP"}
        if kind == "model" and t.cfg.INPUT.ROTATE.PROB:
            explicit |= {"INPUT.ROTATE.DEGREE"}
        diff = [(k, full[k]) for k in sorted(t.assigned, key=_key_rank(t.assigned))
                if k in explicit or not _same(full[k], old[k])]
        # the translation must account for every difference from the parent
        stray = [k for k, v in full.items() if k not in t.assigned and not _same(v, old[k])]
        if stray:
            raise TranslationError(f"{stem}: differs from its parent on untranslated {stray}")
        base = (f"../_base_/models/{name}.yaml" if kind == "model"
                else os.path.relpath(name + ".yaml", folder_of(stem)))
        header = [
            f"# MMSegmentation 0.30: configs/{stem}.py",
            "# Generated by dev/generate_configs.py from mmseg's config: edit the generator.",
        ]
        lines = header + [f'_BASE_: "{base}"'] + dump_keys(diff, t.notes)
        text = "\n".join(lines) + "\n"
        rel = stem + ".yaml"
        self.texts[rel] = text
        self.done[stem] = t
        # round trip: the written file must load to exactly the translation
        back = flatten_cfg(self.load_generated(stem))
        bad = [k for k in full if not _same(full[k], back[k])]
        if bad:
            raise TranslationError(f"{stem}: yaml does not load back to the translation: {bad}")
        return t


def select_stems(root):
    """Every mmseg config of the methods, less BLOCKED."""
    stems = []
    for folder in METHODS:
        for f in sorted(os.listdir(os.path.join(root, folder))):
            if f.endswith(".py") and f"{folder}/{f[:-3]}" not in BLOCKED:
                stems.append(f"{folder}/{f[:-3]}")
    return stems


# ---- READMEs ---------------------------------------------------------------------------------
def _metafile(root, folder):
    import yaml

    path = os.path.join(root, folder, f"{folder}.yml")
    with open(path) as f:
        meta = yaml.safe_load(f)
    models = {m["Name"]: m for m in meta["Models"]}
    return (meta.get("Collections") or [{}])[0], models


PAPERS = {  # where mmseg's metafile has no collection entry
    "hrnet": {"Title": "Deep High-Resolution Representation Learning for Visual Recognition",
              "URL": "https://arxiv.org/abs/1908.07919"},
}


def _miou(v):
    return "-" if v is None else f"{float(v):.2f}"


def _num(v):
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def readme(folder, translations, meta_root, d2seg_results):
    coll, models = _metafile(meta_root, folder)
    title = METHODS[folder]
    paper = coll.get("Paper") or PAPERS.get(folder, {})
    heads = sorted({t.cfg.MODEL.SEM_SEG_HEAD.NAME for t in translations})
    lines = [
        f"# {title}",
        "",
        f"[{paper.get('Title', title)}]({paper.get('URL', '')})",
        "",
        f"d2seg's `{'`, `'.join(heads)}` mirrors MMSegmentation 0.30's, layer for layer (same "
        "module names: mmseg checkpoints load through `d2seg.checkpoint`). Each config below is "
        "generated from the mmseg config of the same name by `dev/generate_configs.py`: same "
        "model, dataset pipeline, crop, batch, schedule and test mode.",
        "",
        "- **mmseg** columns: MMSegmentation 0.30's reported results (its metafile "
        f"`configs/{folder}/{folder}.yml`): single-scale mIoU, multi-scale + flip mIoU "
        "(ms+flip), training memory per GPU (Mem, GB) and inference speed (fps, from "
        "mmseg's `tools/benchmark.py` on a V100); `-` = not reported (or the config is not in "
        "the metafile).",
        "- **d2seg mIoU**: single-scale mIoU of d2seg trained with that config; "
        "\"—\" = not yet trained.",
        "- **Batch** is the total batch (`SOLVER.IMS_PER_BATCH`) = mmseg's GPUs x images per GPU.",
        "",
    ]
    by_ds = OrderedDict((k, []) for k in DATASETS)
    for t in translations:
        by_ds[t.facts["dataset"]].append(t)
    for kind, ts in by_ds.items():
        if not ts:
            continue
        lines += [f"## {DATASETS[kind]['title']}", ""]
        lines += ["| Backbone | Crop size | Lr schd | Batch | Mem (GB) | Inf time (fps) | "
                  "mIoU (mmseg) | mIoU ms+flip (mmseg) | mIoU (d2seg) | config | mmseg model |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in sorted(ts, key=_row_key):
            name = t.stem.split("/")[1]
            m = models.get(name)
            weights = m and m["Weights"]
            if m is None:  # not in mmseg's metafile: no reported figures
                m = {"Results": {"Metrics": {}}}
                # Dark Zurich / Nighttime Driving test mmseg's Cityscapes checkpoints
                twin = models.get(re.sub(r"_(dark|night_driving)$", "_cityscapes", name), {})
                weights = twin.get("Weights")
            md = m.get("Metadata", {})
            inf = md.get("inference time (ms/im)")
            fps = "-" if not inf else f"{1000.0 / inf[0]['value']:.2f}"
            mem = md.get("Training Memory (GB)")
            metrics = m["Results"][0]["Metrics"] if isinstance(m["Results"], list) else \
                m["Results"]["Metrics"]
            ours = d2seg_results.get(t.stem)
            crop = "x".join(map(str, t.facts["crop"])) if t.facts["crop"] else "-"
            backbone = t.facts["backbone"]
            if "mask_size" in t.facts:
                backbone += f" (mask {t.facts['mask_size'][0]}x{t.facts['mask_size'][1]})"
            if t.cfg.MODEL.SEM_SEG_HEAD.DILATION != 1:  # FCN D6: dilated head convs
                backbone = f"D{t.cfg.MODEL.SEM_SEG_HEAD.DILATION}-" + backbone
            if t.facts.get("fp16"):
                backbone += " (fp16)"
            lines.append(
                f"| {backbone} | {crop} | {t.cfg.SOLVER.MAX_ITER // 1000}k | "
                f"{t.cfg.SOLVER.IMS_PER_BATCH} | {_num(mem)} | {fps} | "
                f"{_miou(metrics.get('mIoU'))} | {_miou(metrics.get('mIoU(ms+flip)'))} | "
                f"{'—' if ours is None else _miou(ours)} | [config]({name}.yaml) | "
                f"{f'[model]({weights})' if weights else '-'} |")
        lines.append("")
    slides = sorted({(tuple(t.cfg.TEST.CROP_SIZE), tuple(t.cfg.TEST.STRIDE))
                     for t in translations if t.cfg.TEST.MODE == "slide"})
    aligned = any(t.cfg.MODEL.SEM_SEG_HEAD.ALIGN_CORNERS for t in translations)
    lines += [
        "Notes",
        "",
        "- Each config's `MODEL.WEIGHTS` is the ImageNet checkpoint mmseg's config initialises "
        "the backbone from (`open-mmlab://...`, `torchvision://...`; see "
        "[docs/checkpoints.md](../../docs/checkpoints.md)); `MODEL.WEIGHTS \"\"` trains from "
        "scratch.",
        "- `TEST.MODE whole` configs test on the whole image, resized to "
        "`INPUT.TEST_IMG_SCALE`"
        + ("; `TEST.MODE slide` configs use sliding-window inference ("
           + ", ".join(f"{c[0]}x{c[1]} windows, stride {st[0]}" for c, st in slides) + ")"
           if slides else "")
        + (", with `align_corners=True` in the 769x769 Cityscapes configs." if aligned else "."),
        "- ms+flip is mmseg's `tools/test.py --aug-test`: softmax averaged over the image "
        "resized by 0.5, 0.75, 1.0, 1.25, 1.5 and 1.75, each also flipped.",
    ]
    if any(t.facts.get("fp16") for t in translations):
        lines.append("- fp16 configs set `SOLVER.AMP.ENABLED True` (float16 autocast) and "
                     "`SOLVER.AMP.LOSS_SCALE 512`, mmseg's static loss scale.")
    for t in translations:
        if t.cfg.TEST.AUG.ALWAYS:
            lines.append(
                f"- `{t.stem.split('/')[1]}` is tested as mmseg's config tests it: its "
                "test_pipeline is multi-scale + flip (`MultiScaleFlipAug` with img_ratios "
                f"{list(t.cfg.TEST.AUG.RATIOS)}, flip), so every evaluation, also while "
                "training, is that augmented test (`TEST.AUG.ALWAYS True`)"
                + (f", each view resized to a multiple of {t.cfg.INPUT.TEST_SIZE_DIVISOR} "
                   "(`INPUT.TEST_SIZE_DIVISOR`)" if t.cfg.INPUT.TEST_SIZE_DIVISOR else "")
                + ".")
        if not t.facts["crop"]:
            lines.append(
                f"- `{t.stem.split('/')[1]}` trains without a crop (Crop size `-`): whole images "
                f"resized to fit {'x'.join(map(str, t.cfg.INPUT.IMG_SCALE))}"
                + (f", rotated by up to {max(map(abs, t.cfg.INPUT.ROTATE.DEGREE)):g} degrees "
                   f"with probability {t.cfg.INPUT.ROTATE.PROB:g}" if t.cfg.INPUT.ROTATE.PROB
                   else "")
                + ", each batch padded to its largest image (labels with 255), as mmseg's.")
        if list(t.cfg.TEST.METRICS) != ["mIoU"]:
            lines.append(f"- `{t.stem.split('/')[1]}` also reports "
                         f"{', '.join(m for m in t.cfg.TEST.METRICS if m != 'mIoU')} "
                         "(`TEST.METRICS`, mmseg's evaluation.metric).")
    if any(t.facts["dataset"] in ("dark_zurich", "night_driving") for t in translations):
        lines.append("- Dark Zurich and Nighttime Driving are test sets for Cityscapes models: "
                     "these configs train on Cityscapes (as mmseg's) and test on the set named in "
                     "`DATASETS.TEST`; run them with `--eval-only`. Their model links are "
                     "mmseg's Cityscapes checkpoints of the same model and schedule.")
    blocked = [(stem, why) for stem, (_, why) in BLOCKED.items() if folder_of(stem) == folder]
    for stem, why in blocked:
        lines.append(f"- Not generated: `{stem.split('/')[1]}` ({why}).")
    lines.append("")
    return "\n".join(lines)


def _row_key(t):
    return (t.facts["crop"] == [769, 769], t.facts["backbone_rank"], t.facts.get("fp16", False),
            t.cfg.SOLVER.MAX_ITER, t.cfg.SOLVER.IMS_PER_BATCH, t.stem)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if a file would change")
    ap.add_argument("--d2seg-results", help="JSON {'<folder>/<stem>': mIoU} of d2seg runs")
    ap.add_argument("--only", nargs="*", help="stems (folder/stem) to generate")
    args = ap.parse_args(argv)
    root = mmseg_config_root()
    stems = args.only or select_stems(root)
    gen = Generator()
    try:
        for stem in stems:
            gen.generate(stem)
    except TranslationError as e:
        raise SystemExit(f"error: {e}")
    finally:
        gen.close()
    results = json.load(open(args.d2seg_results)) if args.d2seg_results else {}
    files = dict(gen.texts)
    if not args.only:
        for folder in METHODS:
            ts = [t for s, t in gen.done.items() if folder_of(s) == folder]
            files[f"{folder}/README.md"] = readme(folder, ts, root, results)
    changed = []
    for rel, text in files.items():
        path = os.path.join(REPO, "configs", rel)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            changed.append(rel)
            if not args.check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    n_yaml = sum(rel.endswith(".yaml") for rel in files)
    print(f"{n_yaml} yamls, {len(files) - n_yaml} READMEs; "
          f"{len(changed)} {'would change' if args.check else 'written'}")
    if args.check and changed:
        print("\n".join(changed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
