"""Your data without code: folder datasets declared in the yaml (DATASETS.FOLDER) train and evaluate
with tools/train_net.py and are checked by tools/check_dataset.py; one label reader
(d2seg.data.image_io.read_label) for training, evaluation and the tools."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.config import CfgNode as CN
from detectron2.data import DatasetCatalog

from d2seg import add_d2seg_config
from d2seg.data import register_sem_seg_folder
from d2seg.data.datasets.from_config import add_folder_dataset_config, register_config_datasets
from d2seg.data.image_io import BadSampleError, ColourLabelError, read_label
from d2seg.data.mappers import SemSegDatasetMapper
from d2seg.engine import setup_cfg
from d2seg.evaluation import SemSegEvaluator

import dataset_trees as trees
from test_inference_tools import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("check_dataset", os.path.join(REPO, "tools", "check_dataset.py"))
check_dataset = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_dataset)

H, W = 40, 56


def save_label(path, ids, mode):
    """``ids`` (uint8) saved as a PNG of PIL mode ``mode``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "1":
        img = Image.fromarray(ids.astype(bool))
    elif mode == "P":
        img = Image.fromarray(ids, "L").convert("P")
        img.putpalette([(i * 37) % 256 for i in range(768)])
        img.putdata(ids.ravel().tolist())
    elif mode in ("I;16", "I"):
        img = Image.fromarray(ids.astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        img = Image.fromarray(ids, mode)
    img.save(path)
    assert Image.open(path).mode == mode
    return path


def make_folder(root, mode, values, n_train=4, n_val=2, extra_train=0):
    """root/img/{train,val}/<i>.jpg + root/ann/{train,val}/<i>.png (labels of PIL ``mode``: a
    disc of value values[1], values[2]... on values[0]); ``extra_train`` images more in train,
    which only a split file leaves out."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train + extra_train), ("val", n_val)):
        for i in range(n):
            ids = np.full((H, W), values[0], np.uint8)
            yy, xx = np.mgrid[:H, :W]
            for k, v in enumerate(values[1:]):
                cy, cx = rng.integers(8, H - 8), rng.integers(8, W - 8)
                ids[(yy - cy) ** 2 + (xx - cx) ** 2 < (6 + 2 * k) ** 2] = v
            img = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
            img[ids == values[1]] += 150  # learnable: the foreground is bright
            os.makedirs(root / "img" / split, exist_ok=True)
            Image.fromarray(img).save(root / "img" / split / f"{i}.jpg")
            save_label(str(root / "ann" / split / f"{i}.png"), ids, mode)
    return root


def write_yaml(path, root, names, classes, num_classes, split_files=(), extra=""):
    path.write_text(f"""_BASE_: "{REPO}/configs/quickstart.yaml"
MODEL:
  SEM_SEG_HEAD:
    NUM_CLASSES: {num_classes}
DATASETS:
  FOLDER:
    ROOT: "{root}"
    NAMES: {json.dumps(list(names))}
    IMAGE_DIRS: ["img/train", "img/val"]
    LABEL_DIRS: ["ann/train", "ann/val"]
    SPLIT_FILES: {json.dumps(list(split_files))}
    CLASSES: {json.dumps(list(classes))}
{extra}  TRAIN: ("{names[0]}",)
  TEST: ("{names[1]}",)
""")
    return str(path)


TINY = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.AUX_HEAD.CONVS_DIM", "8",
    "INPUT.CROP.SIZE", "[32,32]", "INPUT.IMG_SCALE", "[56,40]", "INPUT.TEST_IMG_SCALE", "[56,40]",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "3",
    "TEST.EVAL_PERIOD", "3", "SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.DEVICE", "cpu",
]


def run_check_dataset(capsys, *argv):
    code = check_dataset.main([str(a) for a in argv])
    return code, capsys.readouterr().out


# ---- end to end: tools/train_net.py on a declared folder, no Python -------------------------
@pytest.mark.parametrize("variant", ["mode1", "palette_split_reduce"])
def test_train_and_evaluate_declared_folder(tmp_path, variant, capsys):
    if variant == "mode1":  # 1-bit masks: trained and evaluated (the evaluator refused them)
        root = make_folder(tmp_path / "data", "1", [0, 1])
        classes, split_files, extra = ["background", "crack"], [], ""
    else:  # VOC-like P labels, 0 = other (reduce_zero_label), a split file leaving 2 images out
        root = make_folder(tmp_path / "data", "P", [0, 1, 2, 3], extra_train=2)
        trees.write_lines(str(root / "train.txt"), ["0", "1", "2", "3"])
        classes, split_files = ["road", "car", "tree"], ["train.txt", ""]
        extra = ("    REDUCE_ZERO_LABEL: True\n"
                 "    PALETTE: [[128, 64, 128], [0, 0, 142], [107, 142, 35]]\n")
    names = [f"{variant}_train", f"{variant}_val"]
    cfg = write_yaml(tmp_path / "mine.yaml", root, names, classes, len(classes), split_files, extra)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", cfg,
         *TINY, "OUTPUT_DIR", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in open(out / "metrics.json") if line.strip()]
    evals = [r for r in rows if "sem_seg/mIoU" in r]
    assert evals, rows
    assert {f"sem_seg/IoU-{c}" for c in classes} <= set(evals[-1])
    per_class = json.load(open(out / "inference" / names[1] / "sem_seg_per_class.json"))
    assert list(per_class["per_class"]) == classes
    # the same yaml checks clean (every dataset it declares), and names its classes
    code, text = run_check_dataset(capsys, "--config-file", cfg)
    assert code == 0, text
    assert "2 dataset(s) checked, 0 with problems" in text
    assert all(c in text for c in classes)
    if variant != "mode1":
        assert "4 samples" in text and "reduce_zero_label=True" in text  # the split file's 4
    # the tools that take a config see its datasets (registering them again is a no-op):
    # demo's image | ground truth | prediction panels, visualize_data's annotations
    demo, vis = load_tool("demo"), load_tool("visualize_data")
    written, skipped = demo.run(["--config-file", cfg, "--dataset", names[1], "--output",
                                 str(tmp_path / "demo"), *TINY, "MODEL.WEIGHTS",
                                 str(out / "model_final.pth")])
    assert len(written) == 2 and not skipped
    written = vis.main(["--config-file", cfg, "--output-dir", str(tmp_path / "vis"), "--source",
                        "annotation", *TINY])
    assert len(written) == 4 and Image.open(written[0]).size == (2 * W, H)


def test_check_dataset_config_reports_problems(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "L", [0, 1, 5], n_train=2, n_val=1)
    names = ["chk_bad_train", "chk_bad_val"]
    cfg = write_yaml(tmp_path / "c.yaml", root, names, ["a", "b", "c"], 3)
    code, text = run_check_dataset(capsys, "--config-file", cfg)
    assert code == 1 and "label values outside [0, 3)" in text and "2 with problems" in text
    # KEY VALUE overrides after the config; NUM_CLASSES that disagrees with CLASSES: named
    code, text = run_check_dataset(capsys, "--config-file", cfg, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 6)
    assert code == 1 and "MODEL.SEM_SEG_HEAD.NUM_CLASSES=6" in text and "chk_bad_train" in text
    code, text = run_check_dataset(capsys, "--config-file", cfg, "DATASETS.FOLDER.ROOT",
                                   str(tmp_path / "nowhere"))
    assert code == 1 and "DATASETS.FOLDER.IMAGE_DIRS[0]" in text


# ---- one label reader ------------------------------------------------------------------------
def _ids(values, seed=0):
    ids = np.random.default_rng(seed).choice(np.asarray(values, np.uint8), (H, W))
    ids[:3] = values[-1]
    return ids


MODES = {"L": [0, 1, 2, 255], "P": [0, 3, 20, 255], "1": [0, 1], "I;16": [0, 7, 200, 255],
         "I": [0, 4, 255]}


@pytest.mark.parametrize("mode", list(MODES))
def test_one_reader_for_mapper_evaluator_and_mmseg(tmp_path, mode):
    """Each mode reads the same in the training mapper and the evaluator (with and without
    reduce_zero_label), as mmseg's LoadAnnotations where its decoding is defined."""
    ids = _ids(MODES[mode])
    make_image = trees.save_image
    make_image(str(tmp_path / "img" / "0.jpg"), H, W)
    suffix = ".tif" if mode == "I" else ".png"  # PNG holds no 32-bit grey
    path = save_label(str(tmp_path / "ann" / f"0{suffix}"), ids, mode)
    mmseg_peer = pytest.importorskip("mmseg_peer")
    mmseg_peer.stub_mmcv_ext()
    from mmseg.datasets.pipelines import LoadAnnotations

    for reduce in (False, True):
        ref = LoadAnnotations(reduce_zero_label=reduce)(
            dict(ann_info=dict(seg_map=path), seg_prefix=None, seg_fields=[]))["gt_semantic_seg"]
        np.testing.assert_array_equal(read_label(path, reduce), ref)
        name = f"one_reader_{mode}_{reduce}"
        register_sem_seg_folder(name, str(tmp_path / "img"), str(tmp_path / "ann"),
                                [str(k) for k in range(256 - 1)], reduce_zero_label=reduce,
                                label_suffix=suffix)
        d = DatasetCatalog.get(name)[0]
        mapper = SemSegDatasetMapper(is_train=False, augmentations=[], num_classes=255,
                                     reduce_zero_label=reduce)
        np.testing.assert_array_equal(mapper(d)["sem_seg"].numpy(), ref)
        evaluator = SemSegEvaluator(name, distributed=False)
        gt = evaluator.sem_seg_loading_fn(path, dtype=np.int64)
        assert gt.dtype == np.int64
        np.testing.assert_array_equal(gt, ref)


def test_label_errors_name_the_file(tmp_path):
    colour = np.zeros((H, W, 3), np.uint8)
    colour[:, : W // 2] = (128, 64, 128)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(colour).save(rgb)
    with pytest.raises(ColourLabelError, match=r"rgb\.png.*colour mask") as e:
        read_label(str(rgb))
    assert not e.value.grey
    grey = tmp_path / "grey.png"
    Image.fromarray(np.repeat(_ids([0, 1])[..., None], 3, axis=2)).save(grey)
    with pytest.raises(ColourLabelError, match=r"grey\.png.*channels are equal") as e:
        read_label(str(grey))
    assert e.value.grey
    big = tmp_path / "big.png"
    Image.fromarray(np.array([[0, 300], [1, 70000 % 65536]], np.uint16)).save(big)
    with pytest.raises(BadSampleError, match=r"big\.png.*outside 0\.\.255 \(300, 4464\)"):
        read_label(str(big))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(BadSampleError, match=r"cannot read label .*broken\.png"):
        read_label(str(broken))
    # the evaluator raises the same errors (a label that trains also evaluates, and vice versa)
    trees.save_image(str(tmp_path / "img" / "0.jpg"), H, W)
    os.makedirs(tmp_path / "ann")
    os.replace(rgb, tmp_path / "ann" / "0.png")
    register_sem_seg_folder("label_errors_rgb", str(tmp_path / "img"), str(tmp_path / "ann"), ["a", "b"])
    with pytest.raises(ColourLabelError, match=r"0\.png.*colour mask"):
        SemSegEvaluator("label_errors_rgb", distributed=False).sem_seg_loading_fn(
            str(tmp_path / "ann" / "0.png"))


# ---- declarations: keys, registration, errors ------------------------------------------------
def _cfg(tmp_path, **folder):
    cfg = get_cfg()
    add_d2seg_config(cfg)
    root = tmp_path / "data"
    if not (root / "img").exists():
        make_folder(root, "L", [0, 1], n_train=2, n_val=1)
    cfg.DATASETS.FOLDER.ROOT = str(root)
    cfg.DATASETS.FOLDER.NAMES = [f"decl_{tmp_path.name}_train", f"decl_{tmp_path.name}_val"]
    cfg.DATASETS.FOLDER.IMAGE_DIRS = ["img/train", "img/val"]
    cfg.DATASETS.FOLDER.LABEL_DIRS = ["ann/train", "ann/val"]
    cfg.DATASETS.FOLDER.CLASSES = ["background", "thing"]
    for k, v in folder.items():
        cfg.DATASETS.FOLDER[k] = v
    return cfg


def test_add_config_only_adds_missing_keys():
    cfg = get_cfg()
    before = cfg.dump()
    cfg.DATASETS.FOLDER = CN()
    cfg.DATASETS.FOLDER.CLASSES = ["theirs"]  # another project's value stays
    add_folder_dataset_config(cfg)
    assert cfg.DATASETS.FOLDER.CLASSES == ["theirs"] and cfg.DATASETS.FOLDER.IMAGE_SUFFIX == ".jpg"
    del cfg.DATASETS["FOLDER"]
    assert cfg.dump() == before  # nothing else changed


def test_register_again_is_a_noop_and_taken_names_fail(tmp_path):
    cfg = _cfg(tmp_path)
    register_config_datasets(cfg)
    register_config_datasets(cfg)  # same declaration (a second setup_cfg in this process)
    name = cfg.DATASETS.FOLDER.NAMES[0]
    assert len(DatasetCatalog.get(name)) == 2
    cfg.DATASETS.FOLDER.IMAGE_SUFFIX = ".png"
    cfg.DATASETS.FOLDER.IMAGE_DIRS = ["ann/train", "ann/val"]
    with pytest.raises(ValueError, match=rf"DATASETS.FOLDER.NAMES\[0\]='{name}' is already registered by another"):
        register_config_datasets(cfg)
    cfg = _cfg(tmp_path, NAMES=["d2seg_shapes_train", "x_val"])
    with pytest.raises(ValueError, match=r"NAMES\[0\]='d2seg_shapes_train' is already registered \(a built-in"):
        register_config_datasets(cfg)


@pytest.mark.parametrize("case, error, match", [
    ("missing_folder", FileNotFoundError, r"DATASETS.FOLDER.LABEL_DIRS\[1\]='.*/ann/nope' \(dataset 'decl_.*_val'\) is not a folder"),
    ("lengths", ValueError, r"DATASETS.FOLDER.LABEL_DIRS has 1 entries but NAMES has 2"),
    ("split_lengths", ValueError, r"DATASETS.FOLDER.SPLIT_FILES has 1 entries but NAMES has 2"),
    ("empty_folder", ValueError, r"DATASETS.FOLDER.IMAGE_SUFFIX='.jpg' matches no file under DATASETS.FOLDER.IMAGE_DIRS\[0\]=.*the folder is empty"),
    ("suffix", ValueError, r"DATASETS.FOLDER.LABEL_SUFFIX='.bmp' matches no file under DATASETS.FOLDER.LABEL_DIRS\[0\]=.*found extensions: \['.png'\]"),
    ("split_missing", FileNotFoundError, r"DATASETS.FOLDER.SPLIT_FILES\[0\]='.*/nope.txt' \(dataset 'decl_.*_train'\) does not exist"),
    ("no_classes", ValueError, r"DATASETS.FOLDER.CLASSES is empty"),
    ("palette", ValueError, r"DATASETS.FOLDER.PALETTE has 1 colours but CLASSES has 2"),
    ("colour", ValueError, r"DATASETS.FOLDER.PALETTE: \[0, 300, 0\] is not an \[r, g, b\]"),
    ("reduce_ignore", ValueError, r"DATASETS.FOLDER.IGNORE_VALUE=0 with REDUCE_ZERO_LABEL True"),
])
def test_bad_declarations_name_key_and_value(tmp_path, case, error, match):
    changes = {
        "missing_folder": dict(LABEL_DIRS=["ann/train", "ann/nope"]),
        "lengths": dict(LABEL_DIRS=["ann/train"]),
        "split_lengths": dict(SPLIT_FILES=["train.txt"]),
        "empty_folder": dict(IMAGE_DIRS=["empty", "img/val"]),
        "suffix": dict(LABEL_SUFFIX=".bmp"),
        "split_missing": dict(SPLIT_FILES=["nope.txt", ""]),
        "no_classes": dict(CLASSES=[]),
        "palette": dict(PALETTE=[[1, 2, 3]]),
        "colour": dict(PALETTE=[[1, 2, 3], [0, 300, 0]]),
        "reduce_ignore": dict(REDUCE_ZERO_LABEL=True, IGNORE_VALUE=0),
    }[case]
    (tmp_path / "data" / "empty").mkdir(parents=True)
    cfg = _cfg(tmp_path, **changes)
    with pytest.raises(error, match=match):
        register_config_datasets(cfg)


def test_num_classes_and_listing_errors_name_the_dataset(tmp_path):
    cfg_file = tmp_path / "n.yaml"
    make_folder(tmp_path / "data", "L", [0, 1], n_train=2, n_val=1)
    names = ["numcls_train", "numcls_val"]
    write_yaml(cfg_file, tmp_path / "data", names, ["a", "b"], 3)
    args = type("A", (), dict(config_file=str(cfg_file), opts=[]))
    with pytest.raises(ValueError, match=r"MODEL.SEM_SEG_HEAD.NUM_CLASSES=3 but dataset 'numcls_train' has 2"):
        setup_cfg(args, None)
    # a split file that lists a sample without its label: the lazy listing names the key
    trees.write_lines(str(tmp_path / "data" / "val.txt"), ["0", "7"])
    names = ["lazy_train", "lazy_val"]
    write_yaml(cfg_file, tmp_path / "data", names, ["a", "b"], 2, ["", "val.txt"])
    cfg = setup_cfg(args, None)
    assert cfg.DATASETS.TEST == ("lazy_val",)
    with pytest.raises(ValueError, match=r"(?s)dataset 'lazy_val' \(declared in DATASETS.FOLDER.NAMES\[1\]\).*without an image.*7"):
        DatasetCatalog.get("lazy_val")


def test_finetune_doc_config(tmp_path, capsys):
    """docs/finetune.md's yaml (its folder layout generated here) sets up and checks clean."""
    doc = open(os.path.join(REPO, "docs", "finetune.md")).read()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    root = tmp_path / "cracks"
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            trees.save_image(str(root / "img" / split / f"{split}{i}.jpg"), H, W, seed=i)
            save_label(str(root / "ann" / split / f"{split}{i}.png"), _ids([0, 1], i), "1")
    assert '_BASE_: "configs/pspnet/' in block and 'ROOT: "/data/cracks"' in block
    block = block.replace('_BASE_: "configs/', f'_BASE_: "{REPO}/configs/')
    cfg_file = tmp_path / "cracks.yaml"
    cfg_file.write_text(block.replace('"/data/cracks"', f'"{root}"'))
    code, text = run_check_dataset(capsys, "--config-file", cfg_file)
    assert code == 0, text
    assert "2 dataset(s) checked, 0 with problems" in text and "crack" in text
    cfg = setup_cfg(type("A", (), dict(config_file=str(cfg_file), opts=[])), None)
    assert cfg.MODEL.WEIGHTS.startswith("mmseg://pspnet/") and cfg.DATASETS.TEST == ("cracks_val",)
