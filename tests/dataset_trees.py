"""Miniature copies of the public datasets' on-disk layouts (a few tiny images each), and a
context manager that points d2seg's built-in registrations at them."""
import contextlib
import json
import os

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2seg.data.datasets import ade20k, cityscapes, pascal_context, voc
from d2seg.data.datasets._common import datasets_root

H, W = 16, 24  # every miniature image (Cityscapes: 16 x 32)


def _rng(seed):
    return np.random.default_rng(seed)


def save_image(path, h=H, w=W, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def save_label(path, label, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(np.asarray(label, dtype=np.uint8))
    if palette:  # as VOC's SegmentationClass: "P" mode, indices = class ids
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    img.save(path)


def blocks(values, h=H, w=W, dtype=np.uint8):
    """A label map of vertical stripes with the given values."""
    values = list(values)
    cols = np.arange(w) * len(values) // w
    return np.tile(np.asarray(values, dtype)[cols], (h, 1))


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


# ---- Cityscapes ------------------------------------------------------------------------------
CITYSCAPES_IDS = [7, 26, 23, 0, 9, 24]  # road, car, sky, unlabeled, parking (ignored), person


def make_cityscapes(root, splits=(("train", 2), ("val", 2)), train_ids=True):
    """cityscapes/{leftImg8bit,gtFine}/<split>/<city>/... with labelIds, labelTrainIds,
    instanceIds and polygons.json (of which Detectron2's loader reads the image size)."""
    h, w = H, 2 * H
    for split, n in splits:
        for i in range(n):
            city = ["aachen", "bochum"][i % 2]
            stem = f"{city}_{i:06d}_000019"
            save_image(f"{root}/cityscapes/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", h, w, i)
            gt = f"{root}/cityscapes/gtFine/{split}/{city}/{stem}_gtFine_"
            ids = blocks(np.roll(CITYSCAPES_IDS, i), h, w)
            save_label(gt + "labelIds.png", ids)
            save_label(gt + "instanceIds.png", ids)
            if train_ids:
                save_label(gt + "labelTrainIds.png", cityscapes.label_ids_to_train_ids(ids))
            with open(gt + "polygons.json", "w") as f:
                json.dump({"imgHeight": h, "imgWidth": w, "objects": []}, f)
    return os.path.join(root, "cityscapes")


# ---- ADE20K ----------------------------------------------------------------------------------
def make_ade20k(root, n_train=2, n_val=2):
    """ADEChallengeData2016/{images,annotations}/{training,validation}: raw labels 0..150."""
    base = f"{root}/ADEChallengeData2016"
    for split, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        for i in range(n):
            stem = f"{prefix}_{i + 1:08d}"
            save_image(f"{base}/images/{split}/{stem}.jpg", seed=i)
            save_label(f"{base}/annotations/{split}/{stem}.png", blocks([0, 1, 2, 150, 75][i:] + [1]))
    return base


# ---- Pascal VOC 2012 -------------------------------------------------------------------------
VOC_TRAIN, VOC_VAL, VOC_AUG = ["2007_000032", "2007_000039"], ["2007_000033"], ["2008_000002", "2008_000003"]


def make_voc(root, aug=True):
    """VOCdevkit/VOC2012/{JPEGImages,SegmentationClass[,SegmentationClassAug],ImageSets}."""
    base = f"{root}/VOCdevkit/VOC2012"
    for i, stem in enumerate(VOC_TRAIN + VOC_VAL + VOC_AUG):
        save_image(f"{base}/JPEGImages/{stem}.jpg", seed=i)
        if stem not in VOC_AUG:  # palette PNG, 255 = object boundary
            save_label(f"{base}/SegmentationClass/{stem}.png", blocks([0, 15, 255, 20, i]), palette=True)
    write_lines(f"{base}/ImageSets/Segmentation/train.txt", VOC_TRAIN)
    write_lines(f"{base}/ImageSets/Segmentation/val.txt", VOC_VAL)
    if aug:
        for stem in VOC_AUG + VOC_TRAIN:  # SBD covers some VOC train images too
            save_label(f"{base}/SegmentationClassAug/{stem}.png", blocks([0, 1, 2, 12]))
        write_lines(f"{base}/ImageSets/Segmentation/aug.txt", VOC_AUG)
    return base


# ---- Pascal Context --------------------------------------------------------------------------
CONTEXT_TRAIN, CONTEXT_VAL = ["2008_000002", "2008_000003"], ["2008_000007", "2008_000008"]


def make_pascal_context(root):
    """VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext}."""
    base = f"{root}/VOCdevkit/VOC2010"
    for i, stem in enumerate(CONTEXT_TRAIN + CONTEXT_VAL):
        save_image(f"{base}/JPEGImages/{stem}.jpg", seed=i)
        save_label(f"{base}/SegmentationClassContext/{stem}.png", blocks([0, 1, 59, 30 + i]))
    write_lines(f"{base}/ImageSets/SegmentationContext/train.txt", CONTEXT_TRAIN)
    write_lines(f"{base}/ImageSets/SegmentationContext/val.txt", CONTEXT_VAL)
    return base


# ---- registration under a temporary root -----------------------------------------------------
REGISTRATIONS = {
    "cityscapes": (cityscapes.register_cityscapes_sem_seg,
                   [f"cityscapes_fine_sem_seg_{s}" for s in ("train", "val", "test")]),
    "ade20k": (ade20k.register_ade20k, ["ade20k_sem_seg_raw_train", "ade20k_sem_seg_raw_val"]),
    "voc": (voc.register_pascal_voc_sem_seg,
            [f"voc_2012_sem_seg_{s}" for s in ("train", "val", "trainaug")]),
    "pascal_context": (pascal_context.register_pascal_context,
                       [f"pascal_context{k}_sem_seg_{s}" for k in ("", "_59") for s in ("train", "val")]),
}


@contextlib.contextmanager
def registered_under(root, *which):
    """Re-registers the named built-in datasets under ``root`` (as if $DETECTRON2_DATASETS were
    ``root`` at import), restoring the default registration afterwards."""
    which = which or tuple(REGISTRATIONS)

    def reregister(path):
        for key in which:
            register, names = REGISTRATIONS[key]
            for name in names:
                if name in DatasetCatalog.list():
                    DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            register(str(path))

    reregister(root)
    try:
        yield
    finally:
        reregister(datasets_root())


# ---- mmseg's other datasets (issue 15): the official downloads in miniature -----------------
# Each make_*_download writes what the dataset's site hands out (zips, .mat, .tif), for the
# preparation tools of tools/datasets/ to convert into the layout d2seg registers.
import io  # noqa: E402
import zipfile  # noqa: E402

from d2seg.data.datasets import (coco_stuff, dark_zurich, isaid, isprs, loveda,  # noqa: E402
                                 nighttime_driving)


def image_bytes(array, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def rgb(h=H, w=W, seed=0):
    return _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def color_label(ids, colors):
    """An RGB label image painting class ids with their colours (an unknown id: magenta)."""
    table = np.array(list(colors) + [[255, 0, 255]] * (256 - len(colors)), np.uint8)
    return table[np.asarray(ids)]


def write_zip(path, members):
    """members: {name: bytes}."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def truncate(path, keep=0.5):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


# COCO-Stuff 10k: cocostuff-10k-v1.1.zip unpacked. S holds COCO ids (0 = unlabelled), including
# 12, one of the 11 ids COCO-Stuff never uses, and stuff ids up to 182.
COCO10K_TRAIN, COCO10K_TEST = ["COCO_train2014_000000000077", "COCO_train2014_000000000078"], \
    ["COCO_train2014_000000000081"]


def make_coco_stuff_10k_download(root):
    from scipy.io import savemat

    for i, stem in enumerate(COCO10K_TRAIN + COCO10K_TEST):
        save_image(f"{root}/images/{stem}.jpg", seed=i)
        os.makedirs(f"{root}/annotations", exist_ok=True)
        savemat(f"{root}/annotations/{stem}.mat",
                {"S": blocks([0, 1, 12, 13, 91 + i, 92, 182], dtype=np.uint16), "names": ["x"]})
    write_lines(f"{root}/imageLists/train.txt", COCO10K_TRAIN)
    write_lines(f"{root}/imageLists/test.txt", COCO10K_TEST)
    return str(root)


# COCO-Stuff 164k: COCO 2017 images + stuffthingmaps_trainval2017.zip (id-1, 255 = unlabelled).
def make_coco_stuff_164k_download(root, n_train=2, n_val=1):
    for sub, n in (("train2017", n_train), ("val2017", n_val)):
        for i in range(n):
            stem = f"{i + (0 if sub == 'train2017' else 100):012d}"
            save_image(f"{root}/images/{sub}/{stem}.jpg", seed=i)
            save_label(f"{root}/annotations/{sub}/{stem}.png", blocks([0, 11, 12, 91, 181, 255, i]))
    return str(root)


# LoveDA: Train.zip / Val.zip / Test.zip; masks 0 = no-data, 1..7.
def make_loveda_download(root):
    for split, names in (("Train", {"Rural": [0, 1], "Urban": [1366]}),
                         ("Val", {"Rural": [2522], "Urban": [3514]}),
                         ("Test", {"Rural": [4191], "Urban": [5000]})):
        members = {}
        for scene, ns in names.items():
            for n in ns:
                members[f"{split}/{scene}/images_png/{n}.png"] = image_bytes(rgb(seed=n))
                if split != "Test":
                    members[f"{split}/{scene}/masks_png/{n}.png"] = image_bytes(
                        blocks([0, 1, 7, n % 7 + 1]))
        write_zip(f"{root}/{split}.zip", members)
    return str(root)


# ISPRS: RGB tifs, labels coloured with the ISPRS palette plus two other colours: magenta
# (-> 0) and (0, 170, 0), whose 2B + 3G + 4R equals blue's: mmseg's mapping makes it "building".
ISPRS_HW = (40, 56)  # with clip 16 / stride 8: a grid with duplicate and border-aligned tiles


def isprs_label(seed):
    ids = blocks([0, 1, 2, 3, 4, 5, 6, 7, 8][seed % 2:], *ISPRS_HW)
    lab = color_label(ids, [[0, 0, 0]] + isprs.ISPRS_COLORS + [[0, 170, 0]])
    return lab


def make_potsdam_download(root):
    images, labels = {}, {}
    for k, tile in enumerate(["2_10", "5_15"]):  # a train and a val tile
        images[f"2_Ortho_RGB/top_potsdam_{tile}_RGB.tif"] = image_bytes(rgb(*ISPRS_HW, k), "TIFF")
        labels[f"top_potsdam_{tile}_label_noBoundary.tif"] = image_bytes(isprs_label(k), "TIFF")
    write_zip(f"{root}/2_Ortho_RGB.zip", images)
    write_zip(f"{root}/5_Labels_all_noBoundary.zip", labels)
    return str(root)


def make_vaihingen_download(root):
    images, labels = {}, {}
    for k, area in enumerate(["area1", "area2"]):  # a train and a val area
        images[f"top/top_mosaic_09cm_{area}.tif"] = image_bytes(rgb(*ISPRS_HW, k), "TIFF")
        labels[f"top_mosaic_09cm_{area}_noBoundary.tif"] = image_bytes(isprs_label(k), "TIFF")
    labels["top_mosaic_09cm_area9_noBoundary.tif"] = labels["top_mosaic_09cm_area1_noBoundary.tif"]
    write_zip(f"{root}/ISPRS_semantic_labeling_Vaihingen.zip", images)
    write_zip(f"{root}/ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip", labels)
    return str(root)


# iSAID: {train,val,test}/images/part1.zip and {train,val}/Semantic_masks/images.zip. With
# 16 x 16 patches and overlap 6, P0000 (20 x 30) gives overlapping border-aligned windows and
# P0001 (10 x 12) is padded.
ISAID_SIZES = {"P0000": (20, 30), "P0001": (10, 12), "P0002": (16, 40), "P0003": (12, 12)}
ISAID_SPLITS = {"train": ["P0000", "P0001"], "val": ["P0002"], "test": ["P0003"]}


def make_isaid_download(root):
    for split, stems in ISAID_SPLITS.items():
        images, masks = {}, {}
        for k, stem in enumerate(stems):
            h, w = ISAID_SIZES[stem]
            images[f"images/{stem}.png"] = image_bytes(rgb(h, w, k))
            ids = blocks([0, 1, 5, 15, 16, 9][k:], h, w)  # 16: not an iSAID colour (-> 0)
            masks[f"images/{stem}_instance_color_RGB.png"] = image_bytes(
                color_label(ids, isaid.ISAID_COLORS))
        write_zip(f"{root}/{split}/images/part1.zip", images)
        if split != "test":
            write_zip(f"{root}/{split}/Semantic_masks/images.zip", masks)
    return str(root)


# Dark Zurich val and Nighttime Driving test: archives holding Cityscapes trainId labels.
def make_dark_zurich_zip(path, frames=("000321", "000322")):
    members = {}
    for k, f in enumerate(frames):
        stem = f"GOPR0356_frame_{f}"
        members[f"rgb_anon/val/night/GOPR0356/{stem}_rgb_anon.png"] = image_bytes(rgb(seed=k))
        members[f"rgb_anon/val/day/GOPR0356_ref/{stem}_ref_rgb_anon.png"] = image_bytes(rgb(seed=9))
        gt = f"gt/val/night/GOPR0356/{stem}_gt_"
        members[gt + "labelTrainIds.png"] = image_bytes(blocks([0, 10, 13, 255, 18][k:]))
        members[gt + "labelIds.png"] = image_bytes(blocks([7, 23, 26, 0, 33][k:]))
    return write_zip(str(path), members)


def make_nighttime_driving_zip(path, frames=("0_frame_0001", "0_frame_0002")):
    members = {}
    for k, stem in enumerate(frames):
        top = "NighttimeDrivingTest"
        members[f"{top}/leftImg8bit/test/night/{stem}_leftImg8bit.png"] = image_bytes(rgb(seed=k))
        gt = f"{top}/gtCoarse_daytime_trainvaltest/test/night/{stem}_gtCoarse_"
        members[gt + "labelTrainIds.png"] = image_bytes(blocks([2, 8, 255, 11][k:]))
        members[gt + "color.png"] = image_bytes(rgb(seed=5))
    return write_zip(str(path), members)


REGISTRATIONS.update({
    "coco_stuff": (coco_stuff.register_coco_stuff,
                   [f"coco_stuff_10k_sem_seg_{s}" for s in ("train", "test")]
                   + [f"coco_stuff_164k_sem_seg_{s}" for s in ("train", "val")]),
    "loveda": (loveda.register_loveda, [f"loveda_sem_seg_{s}" for s in ("train", "val")]),
    "isprs": (isprs.register_isprs,
              [f"{k}_sem_seg_{s}" for k in ("potsdam", "vaihingen") for s in ("train", "val")]),
    "isaid": (isaid.register_isaid, [f"isaid_sem_seg_{s}" for s in ("train", "val")]),
    "dark_zurich": (dark_zurich.register_dark_zurich, ["dark_zurich_sem_seg_val"]),
    "nighttime_driving": (nighttime_driving.register_nighttime_driving,
                          ["nighttime_driving_sem_seg_test"]),
})


# ---- the occlusion-aware face dataset (mmseg's FaceOccludedDataset) --------------------------
from d2seg.data.datasets import occlusion_face  # noqa: E402

REGISTRATIONS["occlusion_face"] = (occlusion_face.register_occlusion_face,
                                   list(occlusion_face.OCCLUSION_FACE_SETS))
FACE_TRAIN, FACE_VAL = ["00012", "00034"], ["real_0001", "real_0002"]
FACE_SETS = ("NatOcc_hand_sot", "NatOcc_object", "RandOcc")


def face_mask(seed, h=H, w=W):
    """0 = background, 1 = face (a centred box, shifted by seed), as the generator's mask/255."""
    m = np.zeros((h, w), np.uint8)
    m[2 + seed % 3: h - 3, 4 + seed % 5: w - 4] = 1
    return m


def make_occlusion_face(root, train=FACE_TRAIN, val=FACE_VAL):
    """The official layout under ``root/occlusion-aware-face-dataset``: the generator's three
    training sets (img/*.jpg, mask/*.png 0/1) of the faces in the root's train.txt, and RealOcc
    (image/, mask/, split/val.txt). Returns that folder."""
    base = os.path.join(root, "occlusion-aware-face-dataset")
    write_lines(os.path.join(base, "train.txt"), train)
    for k, name in enumerate(FACE_SETS):
        for i, stem in enumerate(train):
            save_image(os.path.join(base, name, "img", stem + ".jpg"), seed=10 * k + i)
            save_label(os.path.join(base, name, "mask", stem + ".png"), face_mask(10 * k + i))
    for i, stem in enumerate(val):
        save_image(os.path.join(base, "RealOcc", "image", stem + ".jpg"), seed=100 + i)
        save_label(os.path.join(base, "RealOcc", "mask", stem + ".png"), face_mask(100 + i))
    write_lines(os.path.join(base, "RealOcc", "split", "val.txt"), val)
    return base


# ---- checks shared by the tests of those datasets --------------------------------------------
def load_tool(name):
    """tools/datasets/<name>.py as a module."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                        "datasets", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"prep_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_mmseg_converter(name):
    """mmseg 0.30's tools/convert_datasets/<name>.py (shipped in its package under .mim), or
    skip when mmseg is not installed."""
    import importlib.util

    import pytest

    mmseg = pytest.importorskip("mmseg")
    path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "tools", "convert_datasets",
                        f"{name}.py")
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not installed")
    spec = importlib.util.spec_from_file_location(f"mmseg_convert_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files_under(root, suffix=".png"):
    """{relative path: pixel array} of the files under root (hidden files left out)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.endswith(suffix) and not f.startswith("."):
                path = os.path.join(dirpath, f)
                with Image.open(path) as img:
                    out[os.path.relpath(path, root)] = np.asarray(img)
    return out


def assert_same_files(ours, theirs, suffix=".png"):
    """The same relative paths with the same pixels under both folders."""
    a, b = files_under(ours, suffix), files_under(theirs, suffix)
    assert sorted(a) == sorted(b)
    assert a, f"no *{suffix} under {ours}"
    for rel in a:
        np.testing.assert_array_equal(a[rel], b[rel], err_msg=rel)
    return a


def check_metadata_equals_mmseg(name, mmseg_class, reduce_zero_label):
    """stuff_classes / stuff_colors / reduce_zero_label of a registration against mmseg's
    dataset class (and the value its config or class fixes); without mmseg, all but the
    comparison with its class."""
    meta = MetadataCatalog.get(name)
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert meta.reduce_zero_label is reduce_zero_label
    assert len(meta.stuff_classes) == len(meta.stuff_colors)
    try:
        from mmseg import datasets
    except ImportError:
        return
    cls = getattr(datasets, mmseg_class)
    assert meta.stuff_classes == list(cls.CLASSES)
    assert meta.stuff_colors == [list(c) for c in cls.PALETTE]


def run_check_dataset(name):
    """tools/check_dataset.py NAME: (exit code, report)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                        "check_dataset.py")
    spec = importlib.util.spec_from_file_location("check_dataset_h5", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = module.main([name])
    return code, out.getvalue()


def evaluate_known_confusion(name):
    """One pass of d2seg's SemSegEvaluator over dataset ``name`` with predictions made from
    the ground truth (every other column shifted by one class): its confusion matrix must be
    the one counted here, and its per-class IoU mmseg's ``mean_iou`` on the same files."""
    import torch

    from d2seg.evaluation import SemSegEvaluator

    meta = MetadataCatalog.get(name)
    n = len(meta.stuff_classes)
    ev = SemSegEvaluator(name, distributed=False)
    ev.reset()
    expected = np.zeros((n + 1, n + 1), np.int64)
    preds, raw_gts = [], []
    for d in DatasetCatalog.get(name):
        with Image.open(d["sem_seg_file_name"]) as img:
            raw = np.asarray(img).astype(np.int64)
        gt = raw.copy()
        if meta.reduce_zero_label:  # mmseg: 0 -> ignore, k -> k-1
            gt = np.where(raw == 0, 255, raw - 1)
            gt[raw == 255] = 255
        pred = np.where(gt == 255, 0, gt)
        pred[:, ::2] = (pred[:, ::2] + 1) % n
        logits = torch.nn.functional.one_hot(torch.from_numpy(pred), n).permute(2, 0, 1).float()
        ev.process([{"file_name": d["file_name"]}], [{"sem_seg": logits}])
        expected += np.bincount((n + 1) * pred.ravel() + np.where(gt == 255, n, gt).ravel(),
                                minlength=(n + 1) ** 2).reshape(n + 1, n + 1)
        preds.append(pred)
        raw_gts.append(raw)
    res = ev.evaluate()["sem_seg"]
    np.testing.assert_array_equal(ev._conf_matrix, expected)
    iou = np.array([res[f"IoU-{c}"] for c in meta.stuff_classes]) / 100
    try:
        from mmseg.core.evaluation import mean_iou
    except ImportError:
        return res
    ref = mean_iou(preds, raw_gts, n, ignore_index=255, reduce_zero_label=meta.reduce_zero_label)
    # mmseg: IoU of classes absent from the ground truth but predicted is 0, of classes absent
    # from both NaN; d2seg's evaluator makes the same distinction
    np.testing.assert_allclose(iou, ref["IoU"], rtol=1e-12, equal_nan=True)
    return res
