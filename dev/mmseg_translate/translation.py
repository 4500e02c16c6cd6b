"""The translation of one mmseg config into a d2seg cfg: model (the backbone by its family's
module, see registry.py), heads, data pipeline, schedule and runtime. Every mmseg key must be
read; anything d2seg cannot express raises TranslationError naming the key."""
import os
import re
from collections import OrderedDict

from . import read
from .common import (REPO, Node, TranslationError, _norm, _plain, _same, cfg_get, cfg_set,
                     new_cfg)
from .datasets import DATASETS, _parts, find_dataset
from .registry import BLOCKED, HEAD_ARGS, HEAD_HOOKS, METHOD_ARGS, family_of  # noqa: F401

# mmseg's ImageNet initialisation (model.pretrained or backbone.init_cfg.checkpoint): the
# schemes d2seg's checkpoint resolver takes (see docs/checkpoints.md)
WEIGHTS_RE = re.compile(
    r"^(open-mmlab://|torchvision://|mmcls://|https://download\.openmmlab\.com/)\S+$")
LOCAL_PRETRAIN_RE = re.compile(r"^(\./)?pretrain/[\w.-]+\.pth$")  # mmseg's converted files
GPUS = 4  # "We use distributed training with 4 GPUs by default" (mmseg docs/en/model_zoo.md)

AUX_NODES = ["MODEL.AUX_HEAD", "MODEL.AUX_HEAD_2", "MODEL.AUX_HEAD_3", "MODEL.AUX_HEAD_4"]
_BASE_HEAD_INIT = dict(type="Normal", std=0.01, override=dict(name="conv_seg"))


def _gpus_named(stem, per_gpu):
    """The GPU counts a stem names as <GPUs>x<images per GPU>."""
    return [int(g) for g, n in re.findall(r"_(\d+)x(\d+)_", stem)
            if int(n) == per_gpu and int(g) in (1, 2, 4, 8, 16)]


class Translation:
    """The d2seg cfg of one mmseg config, plus facts for comments and READMEs."""

    def __init__(self, stem):
        self.stem = stem
        raw, self.path = read.load_mmseg(stem)
        self.root = Node(raw, "")
        self.notes = {}  # d2seg key -> comment
        self.facts = {}
        # config nodes this model does not read: they keep the yaml parent's values (the linear
        # Segmenter under its mask-transformer parent)
        self.unread_nodes = []
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
        family = family_of(btype)
        if head_key not in family.base_models:
            raise TranslationError(f"{self.stem}: no d2seg base model for {btype} + {head_key}")
        self.family = family
        self.base_model = family.base_models[head_key]
        if callable(self.base_model):
            self.base_model = self.base_model(self, heads)
        self.cfg = new_cfg(os.path.join(REPO, "configs/_base_/models", self.base_model + ".yaml"))
        self.assigned = OrderedDict()
        self.set("MODEL.META_ARCHITECTURE", arch)

        # the family reads model.backbone; it may name the node of the backbone's init_cfg, and
        # a family with a neck (ICNet's ICNeck) reads model.neck through self.model and returns
        # the neck's {output: channels}, which the heads' in_index count in
        self.model = model
        self.backbone_init = None
        channels = family.translate(self, backbone, btype)
        if model.has("neck"):
            raise TranslationError(f"{self.stem}: model.neck={model.d['neck']!r}: the {btype} "
                                   "family translates no neck")
        init = self.backbone_init
        if init is None:
            init = self.init_node(backbone)
        self.init_weights(model.take("pretrained", None), init)
        train_cfg = model.node("train_cfg", {})
        train_cfg.expect("sampler", None, None)  # CGNet's train_cfg=dict(sampler=None)
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
        aux = [] if aux is None else aux
        many = isinstance(aux, (list, tuple))
        aux = list(aux) if many else [aux]
        if len(aux) > len(AUX_NODES):
            raise TranslationError(f"{self.stem}: model.auxiliary_head has {len(aux)} heads, "
                                   f"d2seg has {len(AUX_NODES)} (MODEL.AUX_HEAD, AUX_HEAD_2..4)")
        for i, node in enumerate(AUX_NODES):
            if i >= len(aux):
                self.set(f"{node}.NAME", "")
                continue
            if not isinstance(aux[i], dict):
                raise TranslationError(f"model.auxiliary_head = {aux[i]!r}: expected a dict")
            n = Node(aux[i], f"model.auxiliary_head[{i}]" if many else "model.auxiliary_head")
            self.root.children.append(n)
            self.head(n, node, channels)
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
        elif LOCAL_PRETRAIN_RE.match(weights):
            # ViT/DeiT/BEiT/MAE: a file mmseg's converters write locally from the authors'
            # release (never published by OpenMMLab); d2seg reads the original layouts itself
            self.set("MODEL.WEIGHTS", "", f"mmseg loads {weights} (made by its tools/"
                     "model_converters from the authors' ImageNet file): give that file, or "
                     "the original, as MODEL.WEIGHTS (docs/checkpoints.md)")
            self.facts["pretrained"] = weights
            return
        elif not WEIGHTS_RE.match(weights):
            raise TranslationError(f"{self.stem}: backbone weights {weights!r}: not an "
                                   "open-mmlab://, torchvision:// or download.openmmlab.com name")
        self.set("MODEL.WEIGHTS", weights, "mmseg's backbone init (ImageNet); \"\" = from scratch")
        self.facts["pretrained"] = weights

    def variable(self, name, value):
        """A variable of mmseg's config files (``checkpoint_file``, ``backbone_norm_cfg``, ...),
        read through the value it fed: it must be that value."""
        if not _same(self.root.take(name, value), value):
            raise TranslationError(f"{self.stem}: variable {name} is not {value!r}, what it fed")

    def init_variable(self, name, backbone):
        """The config files' variable (``checkpoint_file``, ...) naming the backbone's init_cfg
        checkpoint, read through that checkpoint."""
        self.variable(name, (backbone.d.get("init_cfg") or {}).get("checkpoint"))

    def take_keys(self, node, prefix, table):
        """mmseg arguments of ``node`` that are in ``table`` (mmseg name -> key under prefix)."""
        for arg, key in table.items():
            if node.has(arg):
                self.set(f"{prefix}.{key}", _plain(node.take(arg)))

    def out_features(self, node, prefix, names, default=None):
        """mmseg's out_indices -> <prefix>.OUT_FEATURES (names[i] for each index)."""
        idx = node.take("out_indices", default)
        try:
            feats = [names[i] for i in idx]
        except (IndexError, TypeError):
            raise TranslationError(f"{node.path}.out_indices={idx!r}: outputs are {names}")
        self.set(f"{prefix}.OUT_FEATURES", feats)
        return feats

    def channels_of(self, names):
        """{feature: channels} of the d2seg backbone the cfg builds (on the meta device), in
        mmseg's output order: the heads' in_channels are checked against it."""
        import torch
        from detectron2.modeling import build_backbone

        with torch.device("meta"):
            shapes = build_backbone(self.cfg).output_shape()
        return OrderedDict((n, shapes[n].channels) for n in names)

    def init_node(self, node, key="init_cfg"):
        """The Node of ``node.<key>`` (an init_cfg; None read as {})."""
        if node.d.get(key) is None:
            node.take(key, None)
            return Node({}, node._p(key))
        return node.node(key)

    def norm_keys(self, norm, path, node):
        """mmseg's norm_cfg -> <node>.NORM, NORM_EPS, NORM_MOMENTUM (0 = the layer's default)."""
        if norm is None:  # convs without a norm (SETR-MLA's auxiliary FCNHeads)
            self.set(f"{node}.NORM", "")
            return
        if not isinstance(norm, dict) or norm.get("requires_grad") is not True or \
                not set(norm) <= {"type", "requires_grad", "eps", "momentum"}:
            raise TranslationError(f"{path}={norm!r}: d2seg takes a trainable norm type (with "
                                   "eps, momentum) only")
        self.set(f"{node}.NORM", norm["type"])
        for arg, key in (("eps", "NORM_EPS"), ("momentum", "NORM_MOMENTUM")):
            if arg in norm or key in cfg_get(self.cfg, node):  # 0 = the layer's default
                self.set(f"{node}.{key}", float(norm.get(arg, 0.0)))

    def norm(self, node, key):
        n = node.node(key)
        kind = n.take("type")
        n.expect("requires_grad", True)
        if kind not in ("SyncBN", "BN", "GN"):
            raise TranslationError(f"{n.path}: norm {kind!r}")
        return kind

    def head(self, h, node, channels):
        htype = h.take("type")
        self.set(f"{node}.NAME", htype)
        if htype not in METHOD_ARGS:
            raise TranslationError(f"{h.path}: d2seg has no {htype}")
        args = read.head_defaults(htype)
        args.update(h.items())  # the config's arguments over the class defaults
        if htype in HEAD_HOOKS:  # what only this head type has (STDCHead's detail loss); a
            # head that wraps another (K-Net's) hands back the inner head's type and arguments
            htype = HEAD_HOOKS[htype](self, args, node, h.path) or htype
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
        num_classes = args.pop("num_classes", None)  # a hook took a head's own classes
        if num_classes is not None:
            self.num_classes.add(num_classes)
        self.ignore.add(args.pop("ignore_index"))
        if "norm_cfg" in args:  # a hook took a head's own norm (Segmenter's LN)
            self.norm_keys(args.pop("norm_cfg"), f"{h.path}.norm_cfg", node)
        loss = args.pop("loss_decode")
        if not isinstance(loss, dict) or loss.get("type") != "CrossEntropyLoss":
            raise TranslationError(f"{h.path}.loss_decode={loss!r}: d2seg has cross-entropy")
        loss = {k: v for k, v in loss.items() if k != "type"}
        for k, v in dict(use_mask=False, reduction="mean", loss_name="loss_ce").items():
            if loss.pop(k, v) != v:
                raise TranslationError(f"{h.path}.loss_decode.{k}: only {v!r} is supported")
        # mmseg's use_sigmoid: per-class sigmoid BCE on one-hot labels (Fast-SCNN, STDC detail)
        self.set(f"{node}.LOSS_USE_SIGMOID", bool(loss.pop("use_sigmoid", False)))
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
        # the stem's <GPUs>x<images per GPU> (SegFormer's _8x1_, K-Net's _8x2_), where it says
        m2 = _gpus_named(self.stem, per_gpu)
        kind, parent = read.mmseg_parent(self.path)
        if not m2 and kind == "leaf":  # a test variant (BEiT's _ms) trains as its parent
            m2 = _gpus_named(parent, per_gpu)
        if m:  # e.g. OCRNet's _b16_: 8 GPUs x 2
            if int(m[1]) % per_gpu:
                raise TranslationError(f"{self.stem}: batch {m[1]} vs samples_per_gpu {per_gpu}")
            gpus = int(m[1]) // per_gpu
        elif m2:
            gpus = m2[0]
        self.facts["gpus"], self.facts["per_gpu"] = gpus, per_gpu
        self.set("SOLVER.IMS_PER_BATCH", per_gpu * gpus,
                 f"mmseg: {gpus} GPUs x {per_gpu} images (samples_per_gpu)")
        self.set("DATALOADER.NUM_WORKERS", data.take("workers_per_gpu"))
        parts = {}  # data.<name> -> its Nodes (data.train may be mmseg's list of datasets)
        for name in ("train", "val", "test"):
            if name == "test" and not data.has("test"):
                continue  # the occluded-face config: tested on data.val (mmseg's EvalHook)
            v = data.take(name)
            if isinstance(v, dict) and v.get("type") == "RepeatDataset":
                # PoolFormer's train set, repeated `times` per epoch: with iteration-based
                # training and d2seg's infinite shuffled sampler, the same image distribution
                rep = Node(v, f"data.{name}")
                data.children.append(rep)
                rep.take("type")
                rep.take("times")
                v = rep.take("dataset")
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
        self.set("MODEL.PIXEL_STD", [float(x) for x in n.take("std")])  # CGNet's are ints
        self.set("INPUT.FORMAT", "RGB" if n.take("to_rgb") else "BGR")

    # mmseg's train pipeline, in this order; the steps in _OPTIONAL may be left out
    _TRAIN_STEPS = ["LoadImageFromFile", "LoadAnnotations", "Resize", "RandomCrop", "RandomFlip",
                    "RandomRotate", "PhotoMetricDistortion", "Normalize", "Pad",
                    "DefaultFormatBundle", "Collect"]
    _TEST_STEPS = ["Resize", "ResizeToMultiple", "RandomFlip", "Normalize", "ImageToTensor",
                   "Collect"]
    _OPTIONAL = {"RandomCrop", "RandomRotate", "Pad", "ResizeToMultiple",
                 "PhotoMetricDistortion"}

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
            self.set("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", crop.take("cat_max_ratio", 1.0))  # mmseg's default
            crop.expect("ignore_index", 255, 255)
            pad.expect("size", crop_size)  # d2seg pads training batches to INPUT.CROP.SIZE
            pad.expect("pad_val", 0)
            pad.expect("seg_pad_val", 255)
            self.facts["crop"] = crop_size
        else:  # variable sizes: mmseg's collate pads each batch (image 0, label 255), as d2seg's
            self.set("INPUT.CROP.ENABLED", False, "mmseg: no RandomCrop; batches padded to "
                     "their largest image (image 0, label 255)")
            self.facts["crop"] = None
        # mmseg's RandomFlip takes flip_ratio as the old name of prob (CGNet's configs)
        if flip.has("flip_ratio") and not flip.has("prob"):
            flip.d["prob"] = flip.d.pop("flip_ratio")
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
        # mmseg's defaults, see mappers (CGNet's 680x680 config trains without it)
        self.set("INPUT.PHOTOMETRIC_DISTORTION", "PhotoMetricDistortion" in s)
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
        min_size = resize.take("min_size", None)
        if min_size is not None:
            if views == 1:
                raise TranslationError(f"{self.stem}: Resize min_size in a single-view test: "
                                       "d2seg has it in its test-time augmentation")
            self.set("TEST.AUG.MIN_SIZE", int(min_size), "mmseg's Resize(min_size) in the views")
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
            if hook.take("type", "OptimizerHook") == "GradientCumulativeOptimizerHook":
                self.accumulate(hook)
            else:
                self.set("SOLVER.ACCUMULATE_ITERS", 1)
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
        if r.d.get("optimizer_config") == {}:
            # MAE's fp16 = dict(loss_scale='dynamic') next to a plain OptimizerHook: mmseg 0.30's
            # train_segmentor never reads `fp16`, so it trains in float32, as d2seg then does
            Node(fp16, "fp16").items()
            r.take("optimizer_config")
            self.set("SOLVER.AMP.ENABLED", False, "mmseg's `fp16` without Fp16OptimizerHook is "
                     "unused: float32")
            return
        if fp16 != {}:
            raise TranslationError(f"{self.stem}: fp16 = {fp16!r}: d2seg only supports dict()")
        hook = r.node("optimizer_config")
        kind = hook.take("type")
        if kind == "GradientCumulativeFp16OptimizerHook":  # BEiT-L
            self.accumulate(hook)
        elif kind == "Fp16OptimizerHook":
            self.set("SOLVER.ACCUMULATE_ITERS", 1)
        else:
            raise TranslationError(f"{self.stem}: optimizer_config.type={kind!r} with fp16: d2seg "
                                   "has Fp16OptimizerHook, GradientCumulativeFp16OptimizerHook")
        hook.expect("grad_clip", None, None)
        # mmcv keeps the scale at 512 (GradScaler.update(512.) every step, still skipping
        # steps with inf/nan gradients): SOLVER.AMP.LOSS_SCALE does the same
        scale = hook.take("loss_scale", 512.0)  # mmcv's Fp16OptimizerHook default
        if scale == "dynamic":  # mmcv: torch's GradScaler() with its defaults, as d2seg's 0
            scale, note = 0.0, "dynamic: torch's GradScaler, as mmcv's loss_scale='dynamic'"
        elif isinstance(scale, float) and scale > 0:
            note = "static, as mmcv's Fp16OptimizerHook"
        else:
            raise TranslationError(f"{self.stem}: optimizer_config.loss_scale={scale!r}: d2seg "
                                   "has static float scales and 'dynamic'")
        self.set("SOLVER.AMP.ENABLED", True,
                 "mmseg's fp16 (Fp16OptimizerHook): autocast in float16")
        self.set("SOLVER.AMP.DTYPE", "float16")
        self.set("SOLVER.AMP.LOSS_SCALE", scale, note)
        self.facts["fp16"] = True

    def accumulate(self, hook):
        """mmcv's GradientCumulative(Fp16)OptimizerHook -> SOLVER.ACCUMULATE_ITERS."""
        n = hook.take("cumulative_iters", 1)
        if not isinstance(n, int) or n < 1:
            raise TranslationError(f"{self.stem}: {hook.path}.cumulative_iters={n!r}")
        self.set("SOLVER.ACCUMULATE_ITERS", n, "mmcv's GradientCumulative*OptimizerHook: one "
                 "optimizer step every this many iterations")

    def paramwise(self, opt):
        """mmcv's paramwise_cfg -> SOLVER.PARAMWISE; mmseg's layer-wise lr decay constructors
        -> SOLVER.LR_DECAY (docs/parity.md, "Optimiser constructors")."""
        cons = opt.take("constructor", "DefaultOptimizerConstructor")
        pw = opt.node("paramwise_cfg", {})
        if cons == "DefaultOptimizerConstructor":
            keys = []
            for key, mult in sorted(pw.take("custom_keys", {}).items()):
                m = Node(mult, f"{pw.path}.custom_keys.{key}")
                self.root.children.append(m)
                keys.append([key, float(m.take("lr_mult", 1.0)), float(m.take("decay_mult", 1.0))])
            if keys:
                self.set("SOLVER.PARAMWISE.CUSTOM_KEYS", keys,
                         "mmcv paramwise_cfg.custom_keys: [substring, lr_mult, decay_mult]")
            for arg in ("bias_lr_mult", "bias_decay_mult", "norm_decay_mult",
                        "dwconv_decay_mult"):
                if pw.has(arg):
                    self.set(f"SOLVER.PARAMWISE.{arg.upper()}", float(pw.take(arg)))
            for arg in ("bypass_duplicate", "flat_decay_mult", "dcn_offset_lr_mult"):
                if pw.has(arg):
                    raise TranslationError(f"{self.stem}: {pw.path}.{arg}: d2seg's "
                                           "SOLVER.PARAMWISE does not have it")
        elif cons == "LearningRateDecayOptimizerConstructor":
            kind = pw.take("decay_type")
            if kind not in ("stage_wise", "layer_wise"):
                raise TranslationError(f"{self.stem}: {pw.path}.decay_type={kind!r}: d2seg has "
                                       "stage_wise, layer_wise")
            self.set("SOLVER.LR_DECAY.TYPE", kind, "mmseg's LearningRateDecayOptimizerConstructor")
            self.set("SOLVER.LR_DECAY.NUM_LAYERS", pw.take("num_layers"))
            self.set("SOLVER.LR_DECAY.RATE", float(pw.take("decay_rate")))
        elif cons == "LayerDecayOptimizerConstructor":
            self.set("SOLVER.LR_DECAY.TYPE", "layer_decay",
                     "mmseg's LayerDecayOptimizerConstructor")
            self.set("SOLVER.LR_DECAY.NUM_LAYERS", pw.take("num_layers"))
            self.set("SOLVER.LR_DECAY.RATE", float(pw.take("layer_decay_rate")))
        else:
            raise TranslationError(f"{self.stem}: optimizer.constructor={cons!r}: d2seg has "
                                   "mmcv's default, LearningRateDecayOptimizerConstructor and "
                                   "LayerDecayOptimizerConstructor")

    def schedule(self):
        r = self.root
        opt = r.node("optimizer")
        kind = opt.take("type")
        if kind not in ("SGD", "AdamW", "Adam"):
            raise TranslationError(f"{self.stem}: optimizer.type={kind!r}: d2seg has SGD, AdamW, "
                                   "Adam")
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
        self.paramwise(opt)
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
        elif warmup == "linear":  # mmcv: lr * (1 - (1 - i / iters) * (1 - ratio)): d2's on
            # step, d2seg's WarmupPolyLR (MmcvWarmup, on each group's poly lr) on poly
            self.set("SOLVER.WARMUP_METHOD", "linear")
            self.set("SOLVER.WARMUP_ITERS", lr.take("warmup_iters"))
            # mmcv's LrUpdaterHook default warmup_ratio=0.1
            self.set("SOLVER.WARMUP_FACTOR", float(lr.take("warmup_ratio", 0.1)))
        else:
            raise TranslationError(f"{self.stem}: lr_config.warmup={warmup!r}: d2seg has linear")
        if r.has("runner") or not r.has("total_iters"):
            runner = r.node("runner")
            runner.expect("type", "IterBasedRunner")
            self.set("SOLVER.MAX_ITER", runner.take("max_iters"))
        else:  # CGNet: mmseg's train.py builds IterBasedRunner(max_iters=total_iters) itself
            self.set("SOLVER.MAX_ITER", r.take("total_iters"))
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
