"""Writing d2seg yamls (only the keys that differ from the parent, round-tripped) and the
configs/<folder>/README.md tables."""
import json
import os
import re
from collections import OrderedDict

from . import read
from .common import REPO, TranslationError, _same, cfg_set, flatten_cfg, new_cfg
from .datasets import DATASETS
from .registry import BLOCKED, METHODS
from .translation import Translation


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
        kind, name = read.mmseg_parent(t.path)
        if t.family.parent:  # e.g. MobileNetV2 leaves of ResNet leaves: their own base
            kind, name = t.family.parent(t, kind, name)
        if kind == "model" and name is None:  # the model is in the leaf itself
            name = t.base_model
        if kind == "model" and name != t.base_model:
            raise TranslationError(f"{stem}: mmseg base {name} but d2seg base {t.base_model}")
        parent = self.parent_cfg(kind, name)
        old = flatten_cfg(parent)
        unread = tuple(n + "." for n in t.unread_nodes)
        for k, v in old.items():
            if k.startswith(unread) and k not in t.assigned:
                cfg_set(t.cfg, k, v)
        full = flatten_cfg(t.cfg)
        explicit = set(RECIPE_KEYS) if kind == "model" else set()
        if kind == "model" and t.cfg.TEST.MODE == "slide":
            explicit |= {"TEST.CROP_SIZE", "TEST.STRIDE"}
        if kind == "model" and t.cfg.TEST.AUG.ALWAYS:  # the views of mmseg's test, spelt out
            explicit |= {"TEST.AUG.RATIOS", "TEST.AUG.FLIP"}
        if kind == "model" and t.cfg.INPUT.ROTATE.PROB:
            explicit |= {"INPUT.ROTATE.DEGREE"}
        if t.facts.get("pretrained") and not full["MODEL.WEIGHTS"]:
            explicit |= {"MODEL.WEIGHTS"}  # its comment names the local file mmseg loads
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


# ---- READMEs ---------------------------------------------------------------------------------
PAPERS = {  # where mmseg's metafile has no collection entry
    "hrnet": {"Title": "Deep High-Resolution Representation Learning for Visual Recognition",
              "URL": "https://arxiv.org/abs/1908.07919"},
    "vit": {"Title": "An Image is Worth 16x16 Words: Transformers for Image Recognition at "
                     "Scale", "URL": "https://arxiv.org/abs/2010.11929"},
    "beit": {"Title": "BEiT: BERT Pre-Training of Image Transformers",
             "URL": "https://arxiv.org/abs/2106.08254"},
    "mae": {"Title": "Masked Autoencoders Are Scalable Vision Learners",
            "URL": "https://arxiv.org/abs/2111.06377"},
}


def _miou(v):
    return "-" if v is None else f"{float(v):.2f}"


def _num(v):
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def readme(folder, translations, meta_root, d2seg_results):
    coll, models = read.metafile(meta_root, folder)
    title = METHODS[folder]
    paper = coll.get("Paper") or PAPERS.get(folder, {})
    heads = sorted({t.cfg.MODEL.SEM_SEG_HEAD.NAME for t in translations})
    lines = [
        f"# {title}",
        "",
        f"[{paper.get('Title', title)}]({paper.get('URL', '')})",
        "",
        (f"d2seg's `{'`, `'.join(heads)}` mirrors MMSegmentation 0.30's, layer for layer (same "
         "module names: mmseg checkpoints load through `d2seg.checkpoint`). Each config below is "
         "generated from the mmseg config of the same name by `dev/generate_configs.py`: same "
         "model, dataset pipeline, crop, batch, schedule and test mode.") if heads else
        "No config of this folder is generated yet (see the notes below).",
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
    local = sorted({t.facts["pretrained"] for t in translations
                    if t.facts.get("pretrained") and not t.cfg.MODEL.WEIGHTS})
    if local:  # ViT/BEiT/MAE: mmseg starts from files its converters write, never published
        lines.append(
            "- `MODEL.WEIGHTS \"\"` here does not mean from scratch: mmseg initialises the "
            "backbone from " + ", ".join(f"`{f}`" for f in local) + ", files its "
            "tools/model_converters write from the authors' ImageNet release; give that file, "
            "or the original, as `MODEL.WEIGHTS` (see the yaml's comment and "
            "[docs/checkpoints.md](../../docs/checkpoints.md)).")
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

