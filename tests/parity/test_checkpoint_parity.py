"""MMSegmentation checkpoints in d2seg, end to end, for the 13 methods.

For each method: mmseg 0.30 builds its model from its own Cityscapes config with random weights
(every constant-initialised parameter randomised, BN statistics calibrated so logits are O(1)),
saves an mmseg checkpoint (0.x or 1.x layout, alternately), ``convert_mmseg_checkpoint`` converts
it, SegCheckpointer loads the result into the model of the matching d2seg config
(``MODEL.WEIGHTS``), and the full outputs are compared in eval mode: mmseg's
``whole_inference`` / ``slide_inference`` / ``inference`` (``rescale=True``, back to the original
size) against d2seg's ``model([{"image", "height", "width"}])``, for whole and slide inference.
The per-head parity tests compare ``encode_decode`` only; this file covers the checkpoint path,
the normalisation, the sliding windows and the resize to the original size.

    D2SEG_WRITE_PARITY_TABLE=1 python -m pytest -q tests/parity/test_checkpoint_parity.py

also writes the table of figures into docs/checkpoints.md.
"""
import copy
import os
import re
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import CheckpointMismatchError, SegCheckpointer, convert_mmseg_checkpoint
from d2seg.checkpoint.backbones import detect_backbone_format
from d2seg.checkpoint.convert import looks_like_mmseg
from psamask_reference import NaivePSAMask

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

# method -> (mmseg config stem = d2seg configs/<stem>.yaml, d2seg model yaml under _base_/models)
METHODS = {
    "FCN": ("fcn/fcn_r50-d8_512x1024_40k_cityscapes", "fcn_r50-d8"),
    "PSPNet": ("pspnet/pspnet_r50-d8_512x1024_40k_cityscapes", "pspnet_r50-d8"),
    "DeepLabV3": ("deeplabv3/deeplabv3_r50-d8_512x1024_40k_cityscapes", "deeplabv3_r50-d8"),
    "DeepLabV3+": (
        "deeplabv3plus/deeplabv3plus_r50-d8_512x1024_40k_cityscapes", "deeplabv3plus_r50-d8"),
    "PSANet": ("psanet/psanet_r50-d8_512x1024_40k_cityscapes", "psanet_r50-d8"),
    "UPerNet": ("upernet/upernet_r50_512x1024_40k_cityscapes", "upernet_r50"),
    "GCNet": ("gcnet/gcnet_r50-d8_512x1024_40k_cityscapes", "gcnet_r50-d8"),
    "NonLocal": ("nonlocal_net/nonlocal_r50-d8_512x1024_40k_cityscapes", "nonlocal_r50-d8"),
    "CCNet": ("ccnet/ccnet_r50-d8_512x1024_40k_cityscapes", "ccnet_r50-d8"),
    "DANet": ("danet/danet_r50-d8_512x1024_40k_cityscapes", "danet_r50-d8"),
    "ANN": ("ann/ann_r50-d8_512x1024_40k_cityscapes", "ann_r50-d8"),
    "FCN HRNetV2-W18": ("hrnet/fcn_hr18_512x1024_40k_cityscapes", "fcn_hr18"),
    "OCRNet HRNetV2-W18": ("ocrnet/ocrnet_hr18_512x1024_40k_cityscapes", "ocrnet_hr18"),
}
IMG = (64, 96)  # the (test-resized) image both models see
ORI = (80, 120)  # the original size the logits are resized back to
CROP, STRIDE = (48, 64), (32, 40)  # slide: 2 x 2 overlapping windows on 64 x 96
BN = [f"MODEL.{node}.NORM" for node in
      ("RESNETS", "HRNET", "SEM_SEG_HEAD", "AUX_HEAD", "CASCADE_HEAD")]
TOL, MIN_AGREEMENT = 1e-4, 0.9999
RESULTS = {}
DOC = Path(__file__).resolve().parents[2] / "docs" / "checkpoints.md"


def d2seg_cfg(yaml, weights="", stem=None):
    """The d2seg config of mmseg's ``stem`` (configs/<stem>.yaml) where it exists, else the model
    yaml; BN instead of SyncBN (one process), and the test's slide window."""
    path = REPO_CONFIGS / f"{stem}.yaml" if stem else None
    if path is None or not path.is_file():
        path = REPO_CONFIGS / f"_base_/models/{yaml}.yaml"
    opts = [x for key in BN for x in (key, "BN")]
    return get_d2seg_cfg(path, opts + [
        "MODEL.WEIGHTS", weights, "TEST.CROP_SIZE", list(CROP), "TEST.STRIDE", list(STRIDE)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Inputs this small gain nothing from intra-op threads, and on a busy 2-core runner two
    spinning OpenMP threads make each forward ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=list(METHODS))
def case(request, tmp_path_factory):
    name = request.param
    mmseg_name, yaml = METHODS[name]
    mm_cfg = mmseg_peer.mmseg_config(mmseg_name)
    with pytest.MonkeyPatch.context() as mp:
        if name == "PSANet":  # mmcv's PSAMask is a compiled op: its naive loop stands in
            from mmseg.models.decode_heads import psa_head

            mp.setattr(psa_head, "PSAMask", NaivePSAMask)
        ref = mmseg_peer.build_mmseg_model(mm_cfg)
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(4, IMG))
    tmp = tmp_path_factory.mktemp(re.sub(r"\W", "_", name))
    src, dst = tmp / "mmseg.pth", tmp / "d2seg.pth"
    version = "0.x" if list(METHODS).index(name) % 2 == 0 else "1.x"
    mmseg_peer.save_mmseg_checkpoint(ref, src, version)
    convert_mmseg_checkpoint(str(src), str(dst))

    cfg = d2seg_cfg(yaml, str(dst), stem=mmseg_name)
    model = build_model(cfg).eval()
    checkpointer = SegCheckpointer(model)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    yield types.SimpleNamespace(name=name, yaml=yaml, ref=ref, model=model, src=src, dst=dst,
                                report=checkpointer.last_report, mm_cfg=mm_cfg, version=version)
    src.unlink()
    dst.unlink()


@pytest.fixture(scope="module")
def other_models():
    """d2seg models of two methods, to load the checkpoints of the others into."""
    return {yaml: build_model(d2seg_cfg(yaml)).eval() for yaml in ("pspnet_r50-d8", "fcn_r50-d8")}


@pytest.fixture(scope="module", autouse=True)
def parity_table():
    yield
    if not RESULTS:
        return
    table = format_table(RESULTS)
    print("\n" + table)
    if os.environ.get("D2SEG_WRITE_PARITY_TABLE") and len(RESULTS) == len(METHODS):
        text = DOC.read_text()
        start, end = "<!-- parity-table:start -->", "<!-- parity-table:end -->"
        head, rest = text.split(start)
        DOC.write_text(head + start + "\n" + table + "\n" + end + rest.split(end)[1])


def format_table(results):
    rows = [
        "| method | mmseg ckpt | max abs diff, whole | max abs diff, slide | argmax agreement "
        "whole / slide | max abs logit (mmseg) |",
        "|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        r = results.get(name, {})
        if "whole" not in r or "slide" not in r:
            continue
        w, s = r["whole"], r["slide"]
        rows.append(
            f"| {name} | {r['version']} | {w['diff']:.2e} | {s['diff']:.2e} | "
            f"{100 * w['agree']:.3f} % / {100 * s['agree']:.3f} % | {w['ref_max']:.2f} |"
        )
    return "\n".join(rows)


def test_converted_checkpoint_loads_every_tensor(case):
    report = case.report
    assert not report.errors, report.error_message()
    assert not (report.aux_missing or report.aux_unexpected or report.kept_init)
    assert len(report.loaded) == len(case.model.state_dict())
    # a d2seg state_dict is never mistaken for an mmseg one (HRNet's conv1/bn1 included)
    assert not looks_like_mmseg(case.model.state_dict())
    assert detect_backbone_format(case.model.state_dict()) is None
    # the loaded tensors are mmseg's (spot check: the classifier)
    sd = torch.load(case.src, weights_only=False)["state_dict"]
    key = "decode_head.1.conv_seg.weight" if "OCR" in case.name else "decode_head.conv_seg.weight"
    assert torch.equal(case.model.decode_head.conv_seg.weight, sd[key])


def test_mmseg_file_through_model_weights_equals_converted(case):
    """MODEL.WEIGHTS may name the mmseg .pth itself: same tensors as the converted file."""
    direct = SegCheckpointer(case.model)._load_file(str(case.src))["model"]
    converted = torch.load(case.dst, weights_only=False)["model"]
    assert direct.keys() == converted.keys()
    assert all(torch.equal(direct[k], converted[k]) for k in direct)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_outputs_match_mmseg(case, mode):
    from mmcv import ConfigDict

    ref, model = case.ref, case.model
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, *IMG, generator=g) * 255  # RGB 0-255, what d2seg's mapper yields
    norm = case.mm_cfg.img_norm_cfg  # mmseg gets the image normalised with its own values
    img = ((image - torch.tensor(norm.mean).view(3, 1, 1)) / torch.tensor(norm.std).view(3, 1, 1))[None]
    meta = [dict(img_shape=(*IMG, 3), ori_shape=(*ORI, 3), pad_shape=(*IMG, 3), flip=False)]
    ref.test_cfg = ConfigDict(mode=mode, crop_size=CROP, stride=STRIDE)
    model.test_mode = mode
    # one mmseg pass: inference() (softmax of the rescaled logits), keeping the logits it gets
    # from whole_inference / slide_inference on the way
    captured = {}
    infer_name = f"{mode}_inference"
    infer = getattr(ref, infer_name)
    setattr(ref, infer_name, lambda *a, **k: captured.setdefault("logits", infer(*a, **k)))
    try:
        with torch.no_grad():
            expected_prob = ref.inference(img, meta, rescale=True)[0]
            got = model([{"image": image, "height": ORI[0], "width": ORI[1]}])[0]["sem_seg"]
    finally:
        delattr(ref, infer_name)
    expected = captured["logits"][0]
    model.test_mode = "whole"
    assert got.shape == expected.shape == (19, *ORI)
    diff = (got - expected).abs().max().item()
    agree = (got.argmax(0) == expected_prob.argmax(0)).float().mean().item()
    ref_max = expected.abs().max().item()
    RESULTS.setdefault(case.name, {"version": case.version})[mode] = dict(
        diff=diff, agree=agree, ref_max=ref_max)
    assert 0.1 < ref_max < 100, ref_max  # logits of order 1: the tolerance means something
    assert diff <= TOL, (case.name, mode, diff)
    assert (F.softmax(got, 0) - expected_prob).abs().max() <= TOL
    assert agree >= MIN_AGREEMENT


def test_another_class_count_raises_naming_the_key(case):
    model = copy.deepcopy(case.model)
    head = model.decode_head
    head.conv_seg = torch.nn.Conv2d(head.conv_seg.in_channels, 7, 1)
    before = model.backbone.state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch for decode_head\.conv_seg"
                       r"\.weight: \(19, .*\(7, .*NUM_CLASSES"):
        SegCheckpointer(model).load(str(case.dst))
    # checked before loading: nothing was half-loaded
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_of_another_method_raises_naming_keys(case, other_models):
    other = "fcn_r50-d8" if case.yaml == "pspnet_r50-d8" else "pspnet_r50-d8"
    model = other_models[other]
    w = model.decode_head.conv_seg.weight.clone()
    with pytest.raises(CheckpointMismatchError) as e:
        SegCheckpointer(model).load(str(case.src))  # the mmseg file itself
    msg = str(e.value)
    assert str(case.src) in msg and "decode_head." in msg
    assert re.search("missing from the checkpoint|the model does not have|shape mismatch", msg)
    assert torch.equal(model.decode_head.conv_seg.weight, w)
