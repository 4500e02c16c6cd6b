"""d2seg is a guest in a Detectron2 project: importing it and adding its keys changes nothing of
Detectron2's (defaults, model-zoo and project models, datasets, metadata, URL handling)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from detectron2.config import get_cfg

import d2seg
from d2seg.config import UNHONOURED_DETECTRON2_KEYS, check_detectron2_keys
from d2seg.solver import build_optimizer

from common import REPO_CONFIGS, get_d2seg_cfg, tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Panoptic-DeepLab's package imports panopticapi (a GitHub-only package) for its dataset mapper,
# which these tests do not use
STUB_PANOPTICAPI = (
    "import sys, types; _p = types.ModuleType('panopticapi'); _u = types.ModuleType('panopticapi.utils'); "
    "_u.rgb2id = None; _p.utils = _u; sys.modules.setdefault('panopticapi', _p); "
    "sys.modules.setdefault('panopticapi.utils', _u)")
exec(STUB_PANOPTICAPI)


def flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        if hasattr(v, "items"):
            out.update(flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def test_add_d2seg_config_changes_no_detectron2_default():
    before = flat(get_cfg())
    cfg = get_cfg()
    d2seg.add_d2seg_config(cfg)
    after = flat(cfg)
    assert {k: (v, after[k]) for k, v in before.items() if after[k] != v} == {}
    assert len(after) > len(before) + 100  # d2seg's keys were added
    d2seg.add_d2seg_config(cfg)  # twice: still nothing changed
    assert flat(cfg) == after


def test_add_d2seg_config_keeps_values_set_before():
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NAME = "MyHead"
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.5  # a project's key that d2seg also uses
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"
    d2seg.add_d2seg_config(cfg)
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "MyHead"
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.5
    assert cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
    assert cfg.MODEL.AUX_HEAD.NAME == "" and cfg.MODEL.PSP_HEAD.POOL_SCALES == [1, 2, 3, 6]


@pytest.mark.parametrize("add_project", ["deeplab", "panoptic_deeplab"])
def test_project_config_the_same_with_d2seg_before_or_after(add_project):
    module = __import__(f"detectron2.projects.{add_project}", fromlist=["x"])
    add = getattr(module, f"add_{add_project}_config")
    alone = get_cfg()
    add(alone)
    for order in ("d2seg first", "d2seg after"):
        cfg = get_cfg()
        if order == "d2seg first":
            d2seg.add_d2seg_config(cfg)
            add(cfg)
        else:
            add(cfg)
            d2seg.add_d2seg_config(cfg)
        both = flat(cfg)
        assert {k: (v, both[k]) for k, v in flat(alone).items() if both[k] != v} == {}, order


def test_zoo_configs_do_not_depend_on_project_keys():
    """A d2seg config gives the same values whether or not a Detectron2 project (DeepLab,
    Panoptic-DeepLab) added its keys before d2seg's: d2seg's choices are in its base yamls."""
    from detectron2.projects.panoptic_deeplab import add_panoptic_deeplab_config

    for rel in ("pspnet/pspnet_r50-d8_512x1024_40k_cityscapes.yaml",
                "deeplabv3plus/deeplabv3plus_r101-d16-mg124_512x1024_40k_cityscapes.yaml",
                "ocrnet/ocrnet_hr18_512x1024_40k_cityscapes.yaml", "quickstart.yaml"):
        plain = get_d2seg_cfg(REPO_CONFIGS / rel)
        cfg = get_cfg()
        add_panoptic_deeplab_config(cfg)
        d2seg.add_d2seg_config(cfg)
        cfg.merge_from_file(str(REPO_CONFIGS / rel))
        cfg.MODEL.DEVICE = "cpu"
        mixed = flat(cfg)
        assert {k: (v, mixed[k]) for k, v in flat(plain).items() if mixed[k] != v} == {}, rel


# ---- Detectron2's own models, datasets and URLs, in a process with and without d2seg ----------
PROBE = STUB_PANOPTICAPI + "\n" + textwrap.dedent(r'''
    import json, os, sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.utils.file_io import PathManager
    mode, tmp = sys.argv[1], sys.argv[2]
    if mode != "none":
        import d2seg
    from detectron2.projects.deeplab import add_deeplab_config
    from detectron2.projects.panoptic_deeplab import add_panoptic_deeplab_config

    dilated_c5 = model_zoo.get_config_file("Base-RCNN-DilatedC5.yaml")
    deeplab = os.path.join(tmp, "deeplab_v3_plus.yaml")  # projects/DeepLab's Cityscapes config
    with open(deeplab, "w") as f:
        f.write(f"""_BASE_: "{dilated_c5}"
    MODEL:
      META_ARCHITECTURE: "SemanticSegmentor"
      PIXEL_MEAN: [123.675, 116.280, 103.530]
      PIXEL_STD: [58.395, 57.120, 57.375]
      BACKBONE: {{FREEZE_AT: 0, NAME: "build_resnet_deeplab_backbone"}}
      RESNETS: {{DEPTH: 101, NORM: "SyncBN", OUT_FEATURES: ["res2", "res5"], RES5_MULTI_GRID: [1, 2, 4],
                STEM_TYPE: "deeplab", STEM_OUT_CHANNELS: 128, STRIDE_IN_1X1: False}}
      SEM_SEG_HEAD: {{NAME: "DeepLabV3PlusHead", IN_FEATURES: ["res2", "res5"], PROJECT_FEATURES: ["res2"],
                     PROJECT_CHANNELS: [48], ASPP_CHANNELS: 256, ASPP_DILATIONS: [6, 12, 18],
                     ASPP_DROPOUT: 0.1, CONVS_DIM: 256, COMMON_STRIDE: 4, NUM_CLASSES: 19,
                     LOSS_TYPE: "hard_pixel_mining", NORM: "SyncBN"}}
    INPUT:
      MIN_SIZE_TRAIN: (512, 768, 1024, 1280, 1536, 1792, 2048)
      MIN_SIZE_TRAIN_SAMPLING: "choice"
      MIN_SIZE_TEST: 1024
      MAX_SIZE_TRAIN: 4096
      MAX_SIZE_TEST: 2048
      CROP: {{ENABLED: True, TYPE: "absolute", SIZE: [512, 1024]}}
    SOLVER: {{BASE_LR: 0.01, MAX_ITER: 90000, LR_SCHEDULER_NAME: "WarmupPolyLR", IMS_PER_BATCH: 16}}
    """)
    panoptic = os.path.join(tmp, "panoptic_deeplab.yaml")  # projects/Panoptic-DeepLab's, R-52
    with open(panoptic, "w") as f:
        f.write(f"""_BASE_: "{dilated_c5}"
    MODEL:
      META_ARCHITECTURE: "PanopticDeepLab"
      BACKBONE: {{FREEZE_AT: 0, NAME: "build_resnet_deeplab_backbone"}}
      RESNETS: {{DEPTH: 50, NORM: "SyncBN", OUT_FEATURES: ["res2", "res3", "res5"], RES5_DILATION: 2,
                RES5_MULTI_GRID: [1, 2, 4], STEM_TYPE: "deeplab", STEM_OUT_CHANNELS: 128,
                STRIDE_IN_1X1: False}}
      SEM_SEG_HEAD: {{NAME: "PanopticDeepLabSemSegHead", IN_FEATURES: ["res2", "res3", "res5"],
                     PROJECT_FEATURES: ["res2", "res3"], PROJECT_CHANNELS: [32, 64], HEAD_CHANNELS: 256,
                     CONVS_DIM: 256, COMMON_STRIDE: 4, NUM_CLASSES: 19, NORM: "SyncBN",
                     USE_DEPTHWISE_SEPARABLE_CONV: True}}
      INS_EMBED_HEAD: {{NAME: "PanopticDeepLabInsEmbedHead", IN_FEATURES: ["res2", "res3", "res5"],
                       NORM: "SyncBN"}}
      PANOPTIC_DEEPLAB: {{USE_DEPTHWISE_SEPARABLE_CONV: True}}
    INPUT: {{FORMAT: "RGB", CROP: {{ENABLED: True, TYPE: "absolute", SIZE: [512, 1024]}}}}
    """)
    cases = {
        "PanopticFPN": (model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"), None),
        "SemanticFPN": (model_zoo.get_config_file("Misc/semantic_R_50_FPN_1x.yaml"), None),
        "DeepLabV3+": (deeplab, add_deeplab_config),
        "Panoptic-DeepLab": (panoptic, add_panoptic_deeplab_config),
    }
    out = {"models": {}}
    for name, (path, add_project) in cases.items():
        cfg = get_cfg()
        if mode == "d2seg_first":
            d2seg.add_d2seg_config(cfg)
        if add_project:
            add_project(cfg)
        if mode == "d2seg_after":
            d2seg.add_d2seg_config(cfg)
        cfg.merge_from_file(path)
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        out["models"][name] = {
            "type": type(model).__name__,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
            "cfg": cfg.dump(),
        }
    def loader(fn):
        return [getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(type(fn))),
                repr(getattr(fn, "__defaults__", None))]
    out["datasets"] = {n: [loader(DatasetCatalog[n]), repr(sorted(MetadataCatalog.get(n).as_dict().items()))]
                       for n in DatasetCatalog.list()}
    handler = PathManager._PathManager__get_path_handler
    urls = ["https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl",
            "detectron2://ImageNetPretrained/MSRA/R-50.pkl", "https://example.com/weights.pth",
            "http://example.com/x.pkl", "https://download.pytorch.org/models/vgg16-397923af.pth",
            "/tmp/local.pth"]
    out["handlers"] = {u: type(handler(u)).__module__ + "." + type(handler(u)).__qualname__ for u in urls}
    catalog = ["https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
               "https://download.pytorch.org/models/resnet50-0676ba61.pth"]
    out["catalog_handlers"] = [type(handler(u)).__name__ for u in catalog]
    print("PROBE" + json.dumps(out))
''')


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    script = tmp / "probe.py"
    script.write_text(PROBE)
    results = {}
    for mode in ("none", "d2seg_first", "d2seg_after"):
        proc = subprocess.run([sys.executable, str(script), mode, str(tmp)], capture_output=True,
                              text=True, cwd=str(tmp), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE"))
        results[mode] = json.loads(line[len("PROBE"):])
    return results


@pytest.mark.parametrize("mode", ["d2seg_first", "d2seg_after"])
@pytest.mark.parametrize("model", ["PanopticFPN", "SemanticFPN", "DeepLabV3+", "Panoptic-DeepLab"])
def test_detectron2_models_build_the_same_next_to_d2seg(probes, mode, model):
    alone, guest = probes["none"]["models"][model], probes[mode]["models"][model]
    assert guest["type"] == alone["type"]
    assert guest["shapes"] == alone["shapes"]
    assert len(alone["shapes"]) > 100
    import yaml
    a, b = flat(yaml.safe_load(alone["cfg"])), flat(yaml.safe_load(guest["cfg"]))
    assert {k: (v, b[k]) for k, v in a.items() if b.get(k) != v} == {}


def test_import_leaves_detectron2_datasets_metadata_and_urls(probes):
    alone, guest = probes["none"], probes["d2seg_first"]
    assert "cityscapes_fine_sem_seg_val" in alone["datasets"]
    changed = {n: (v, guest["datasets"].get(n)) for n, v in alone["datasets"].items()
               if guest["datasets"].get(n) != v}
    assert changed == {}
    assert len(guest["datasets"]) > len(alone["datasets"])  # d2seg's own names were added
    assert guest["handlers"] == alone["handlers"]
    # d2seg's own weights (its table's URLs) are downloaded through its verified handler
    assert guest["catalog_handlers"] == ["CatalogURLHandler"] * 2


# ---- Detectron2 keys that d2seg's models do not read -----------------------------------------
@pytest.mark.parametrize("key, value, names", [
    ("INPUT.MIN_SIZE_TRAIN", (512, 640), "INPUT.IMG_SCALE"),
    ("INPUT.MAX_SIZE_TEST", 2048, "INPUT.TEST_IMG_SCALE"),
    ("TEST.AUG.MIN_SIZES", (400, 500), "TEST.AUG.RATIOS"),
    ("MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 8, "resize their logits"),
    ("MODEL.RESNETS.RES5_DILATION", 2, "MODEL.RESNETS.STAGE_DILATIONS"),
])
def test_unhonoured_detectron2_key_is_refused_naming_the_d2seg_key(key, value, names):
    from detectron2.modeling import build_model

    cfg = tiny_cfg(opts=[key, value])
    with pytest.raises(ValueError, match=rf"{key}=.*{names}"):
        build_model(cfg)
    assert key in UNHONOURED_DETECTRON2_KEYS


def test_detectron2_defaults_pass_the_key_check():
    for rel in ("quickstart.yaml", "psanet/psanet_r50-d8_512x512_80k_ade20k.yaml"):
        check_detectron2_keys(get_d2seg_cfg(REPO_CONFIGS / rel))


@pytest.mark.parametrize("spelling", ["AdamW", "ADAMW", "adamw"])
def test_optimizer_name_as_mask2former_spells_it(spelling):
    cfg = tiny_cfg(opts=["SOLVER.OPTIMIZER", spelling])
    opt = build_optimizer(cfg, torch.nn.Conv2d(3, 4, 1))
    assert type(opt).__name__ == "AdamW"
    # Panoptic-DeepLab's "ADAM" is torch's Adam, as d2seg's "Adam" (mmseg's CGNet recipe)
    opt = build_optimizer(tiny_cfg(opts=["SOLVER.OPTIMIZER", "ADAM"]), torch.nn.Conv2d(3, 4, 1))
    assert type(opt).__name__ == "Adam"
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER='LAMB'"):
        build_optimizer(tiny_cfg(opts=["SOLVER.OPTIMIZER", "LAMB"]), torch.nn.Conv2d(3, 4, 1))


def test_a_family_declares_its_keys_next_to_its_code():
    from detectron2.config import CfgNode as CN

    from d2seg.config import _FAMILY_KEYS, _d2seg_keys, register_config_keys

    @register_config_keys
    def add_keys(keys):  # as a family module does at import
        keys.MODEL.TEST_FAMILY = CN()
        keys.MODEL.TEST_FAMILY.DEPTH = 3
        keys.MODEL.SEM_SEG_HEAD.TEST_FAMILY_KEY = 1.5  # a key in a Detectron2 node
        keys.MODEL.SEM_SEG_HEAD.NAME = "FamilyHead"  # Detectron2 has it: not changed

    try:
        cfg = get_cfg()
        d2seg.add_d2seg_config(cfg)
        assert cfg.MODEL.TEST_FAMILY.DEPTH == 3 and cfg.MODEL.SEM_SEG_HEAD.TEST_FAMILY_KEY == 1.5
        assert cfg.MODEL.SEM_SEG_HEAD.NAME == get_cfg().MODEL.SEM_SEG_HEAD.NAME
    finally:
        _FAMILY_KEYS.remove(add_keys)
        _d2seg_keys.cache_clear()
    cfg = get_cfg()
    d2seg.add_d2seg_config(cfg)
    assert "TEST_FAMILY" not in cfg.MODEL
