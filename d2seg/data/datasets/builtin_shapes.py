"""``d2seg_shapes``: a small procedurally generated dataset for smoke tests and tutorials.

Images of ~128x128 (each side 96..160) show 3-7 objects on a grainy, colour-varying background.
Colours are random per instance, so the 7 object classes must be told apart by SHAPE (solid disc,
rectangle, triangle, ring) or TEXTURE (striped, checkered, dotted, on any outline), at radii of
13 to ~48 pixels, with limited occlusion, background scribbles, JPEG artefacts and mild class
imbalance. About a third of the objects carry a thin ignore (255) band along their boundary.

Version 4 (issue 15) makes it easier to learn in the quickstart's few CPU minutes while keeping
shapes, textures and occlusion: objects start at 13 px in radius (9 before: about one cell of a
stride-8 feature map once the quickstart scaled images down), textures are coarser (5-9 px
checker cells, 8-12 px dot and 9-15 px stripe periods; 4-8, 6-10 and 6-12 before), images hold
3-7 objects (4-10 before), triangles, the class with the least area per radius, are drawn larger
and more often, and train has 500 images (300). With configs/quickstart.yaml (2000 iterations)
it reaches mIoU 59.0 / 57.2 on val (SEED 0, 1), every class above 14 IoU (docs/datasets.md).

The tree ``$DETECTRON2_DATASETS/d2seg_shapes/{images,annotations}/{train,val}`` (JPG + PNG) is
generated on first use, deterministically from a seed, into a temporary folder that is renamed
into place once complete (a marker file records what was generated), so an interrupted run
never leaves a tree that looks complete.
"""
import json
import logging
import os
import shutil
import tempfile
import time

import cv2
import numpy as np
from PIL import Image

from .folder import register_sem_seg_folder

__all__ = ["SHAPES_CLASSES", "render_shapes_sample", "prepare_shapes_dataset",
           "register_shapes_dataset"]

logger = logging.getLogger(__name__)

SHAPES_CLASSES = [
    "background", "disc", "rectangle", "triangle", "ring", "striped", "checkered", "dotted"
]
SHAPES_COLORS = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                 [70, 240, 240], [245, 130, 48], [145, 30, 180]]
_SOLID = ("disc", "rectangle", "triangle", "ring")  # told apart by shape
# Object class frequencies (class imbalance; background dominates by area anyway).
# Triangles are drawn more often (and larger) as they cover the least area for a given radius.
_CLASS_PROBS = np.array([0.14, 0.14, 0.18, 0.13, 0.14, 0.13, 0.14])
_R_MIN = 13  # smallest object radius (px)
_NUM_OBJECTS = (3, 8)  # objects drawn per image: 3..7 (fewer when placement fails)
_VERSION = 4  # bump when the generator's output changes (older trees are then regenerated)
_MARKER = ".complete.json"
SPLITS = {"train": 500, "val": 60}
_SPLIT_IDS = {"train": 0, "val": 1}


# ---- rendering -------------------------------------------------------------------------------
def _smooth_field(rng, h, w, cells, channels, amplitude):
    """Low-frequency noise: a random cells x cells grid upsampled bicubically."""
    grid = rng.normal(0, amplitude, (cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _background(rng, h, w, yy, xx):
    base = rng.uniform(30, 225, 3).astype(np.float32)
    img = base + _smooth_field(rng, h, w, int(rng.integers(2, 6)), 3, rng.uniform(10, 45))
    # grain, same for all channels: the background's texture (objects are smooth)
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(12, 24)
    # a few thin scribbles that are background, so edges alone do not mean "object"
    for _ in range(int(rng.integers(0, 3))):
        a, b = rng.uniform(0, np.pi), rng.uniform(-1, 1) * max(h, w) / 2
        d = np.abs((xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a) - b)
        img[d < rng.uniform(0.6, 1.5)] = rng.uniform(0, 255, 3)
    return img


def _rotated(yy, xx, cy, cx, angle):
    c, s = np.cos(angle), np.sin(angle)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def _shape_mask(kind, rng, yy, xx, cy, cx, r):
    u, v = _rotated(yy, xx, cy, cx, rng.uniform(0, np.pi))
    if kind == "disc":
        return (u / r) ** 2 + (v / (r * rng.uniform(0.8, 1.0))) ** 2 <= 1
    if kind == "rectangle":
        a = r * rng.uniform(0.75, 1.0)
        b = a * rng.uniform(0.35, 0.85)  # clearly elongated or squarish, never a disc
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if kind == "triangle":
        r *= 1.2  # circumradius: its area is still well below a disc's of radius r
        ang = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
        ang += rng.uniform(-0.25, 0.25, 3)
        py, px = cy + r * np.sin(ang), cx + r * np.cos(ang)
        inside = np.ones(yy.shape, bool)
        for i in range(3):  # same side of each edge as the opposite vertex
            j, k = (i + 1) % 3, (i + 2) % 3
            ey, ex = py[j] - py[i], px[j] - px[i]
            opposite = ex * (py[k] - py[i]) - ey * (px[k] - px[i])
            inside &= (ex * (yy - py[i]) - ey * (xx - px[i])) * opposite >= 0
        return inside
    if kind == "ring":
        d = np.sqrt(u ** 2 + v ** 2)
        return (d <= r) & (d >= r * rng.uniform(0.45, 0.7))
    raise ValueError(kind)


def _distinct_color(rng, avoid, min_dist=70.0):
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if all(np.linalg.norm(c - a) >= min_dist for a in avoid):
            return c
    return c


def _boundary(mask):
    """Pixels whose 3x3 neighbourhood is mixed (~2 px band across the outline)."""
    m = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    shifts = [m[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
    return np.logical_or.reduce(shifts) & ~np.logical_and.reduce(shifts)


def render_shapes_sample(rng: np.random.Generator):
    """One (image H x W x 3 uint8 RGB, label H x W uint8) sample."""
    h, w = (int(x) for x in rng.integers(96, 161, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    image = _background(rng, h, w, yy, xx)
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(*_NUM_OBJECTS))):
        cls = 1 + int(rng.choice(len(_CLASS_PROBS), p=_CLASS_PROBS))
        name = SHAPES_CLASSES[cls]
        r = float(np.exp(rng.uniform(np.log(_R_MIN), np.log(0.22 * min(h, w) + _R_MIN))))
        outline = name if name in _SOLID else rng.choice(["disc", "rectangle", "triangle"])
        R = 1.35 * r + 3  # half-size of a window that holds the shape and its boundary band
        for _ in range(4):  # limited occlusion: shapes stay recognisable
            cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
            win = (slice(max(int(cy - R), 0), min(int(cy + R) + 1, h)),
                   slice(max(int(cx - R), 0), min(int(cx + R) + 1, w)))
            y, x, img, lab = yy[win], xx[win], image[win], label[win]
            mask = _shape_mask(outline, rng, y, x, cy, cx, r)
            if mask.sum() >= 12 and (lab[mask] != 0).mean() <= 0.25:
                break
        else:
            continue
        under = img[mask].mean(0)
        y, x = y[mask], x[mask]
        if name not in _SOLID:  # texture on a random outline
            c1 = _distinct_color(rng, [under], 60)
            c2 = _distinct_color(rng, [c1], 110)
            u, v = _rotated(y, x, cy, cx, rng.uniform(0, np.pi))
            if name == "striped":
                on = np.sin(2 * np.pi * u / rng.uniform(9, 15)) > 0
            elif name == "checkered":
                cell = rng.uniform(5, 9)
                on = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 1
            else:  # dots on a square grid
                p = rng.uniform(8, 12)
                on = (u % p - p / 2) ** 2 + (v % p - p / 2) ** 2 < (0.3 * p) ** 2
            img[mask] = np.where(on[:, None], c1, c2)
        else:
            # solid colour with a gentle shading gradient
            c = _distinct_color(rng, [under], 90)
            g = rng.normal(0, 0.4, 2)
            img[mask] = c + ((y - cy) * g[0] + (x - cx) * g[1])[:, None]
        lab[mask] = cls
        if rng.random() < 0.35:
            lab[_boundary(mask)] = 255
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(1, 4)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


# ---- files -----------------------------------------------------------------------------------
def _spec(seed, splits):
    return {"version": _VERSION, "seed": seed, "splits": dict(splits)}


def _read_marker(path):
    try:
        with open(os.path.join(path, _MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_complete(path, spec) -> bool:
    if _read_marker(path) != spec:
        return False
    try:
        return all(
            len(os.listdir(os.path.join(path, sub, split))) == n
            for split, n in spec["splits"].items() for sub in ("images", "annotations")
        )
    except OSError:
        return False


def _write_tree(out, seed, splits):
    for split, n in splits.items():
        img_dir = os.path.join(out, "images", split)
        ann_dir = os.path.join(out, "annotations", split)
        os.makedirs(img_dir)
        os.makedirs(ann_dir)
        for i in range(n):
            # one stream per (seed, split, index): sample i does not depend on the split size
            image, label = render_shapes_sample(np.random.default_rng([seed, _SPLIT_IDS[split], i]))
            Image.fromarray(image).save(os.path.join(img_dir, f"{i:04d}.jpg"), quality=90)
            Image.fromarray(label).save(os.path.join(ann_dir, f"{i:04d}.png"))


def prepare_shapes_dataset(datasets_root: str, seed: int = 0, splits=None,
                           name: str = "d2seg_shapes") -> str:
    """Makes sure ``datasets_root/name`` holds the generated tree; returns its path.

    Generation writes into a hidden temporary folder next to it and renames it into place only
    when every file and the completion marker are written; concurrent callers may both generate,
    the first rename wins. A folder without a matching marker is never used: one generated by
    d2seg for another seed, split sizes or generator version is replaced, anything else (no
    marker, or files missing) raises.
    """
    splits = dict(SPLITS if splits is None else splits)
    unknown = set(splits) - set(_SPLIT_IDS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; known: {sorted(_SPLIT_IDS)}")
    final = os.path.join(datasets_root, name)
    spec = _spec(seed, splits)
    if _is_complete(final, spec):
        return final
    marker = _read_marker(final)
    if os.path.exists(final) and (marker is None or marker == spec):
        raise RuntimeError(
            f"{final!r} exists but is not a complete {name} tree for {spec} (no {_MARKER}, or "
            f"files missing): delete it to regenerate"
        )
    os.makedirs(datasets_root, exist_ok=True)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=datasets_root)
    stale = None
    try:
        _write_tree(tmp, seed, splits)
        with open(os.path.join(tmp, _MARKER), "w") as f:
            json.dump(spec, f)
        if marker is not None:  # an outdated tree of ours: move it aside, then replace it
            stale = tempfile.mkdtemp(prefix=f".{name}.old-", dir=datasets_root)
            try:
                os.rename(final, os.path.join(stale, name))
            except OSError:
                pass  # another process moved it already
            logger.info(f"Replacing {final} (generated for {marker})")
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final, spec):  # not another process that finished first
                raise
        else:
            logger.info(f"Generated {name} ({splits}) in {final} in "
                        f"{time.perf_counter() - start:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def register_shapes_dataset(datasets_root: str, seed: int = 0, name: str = "d2seg_shapes",
                            splits=None):
    """Registers ``{name}_{split}`` for each split (default: train 500, val 60); the data is
    generated on first use."""
    path = os.path.join(datasets_root, name)
    splits = dict(SPLITS if splits is None else splits)
    for split in splits:
        register_sem_seg_folder(
            f"{name}_{split}",
            os.path.join(path, "images", split),
            os.path.join(path, "annotations", split),
            SHAPES_CLASSES,
            colors=SHAPES_COLORS,
            prepare=lambda: prepare_shapes_dataset(datasets_root, seed, splits, name),
        )


register_shapes_dataset(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
