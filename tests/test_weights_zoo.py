"""Trained models by name (d2seg.model_zoo.get / get_config / get_checkpoint_url), convert-once,
meta.CLASSES/PALETTE checks, the shipped configs' MODEL.WEIGHTS and the from-scratch WARNING.

A real zoo config (HRNetV2-W18-Small FCN, Cityscapes) gets an MMSegmentation checkpoint written by
MMSegmentation itself (random weights), published on a local server standing in for
download.openmmlab.com (D2SEG_MIRROR); the table entry of that config points at it."""
import hashlib
import logging
import os

import pytest
import torch

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

import d2seg.model_zoo as zoo
from http_server import FileServer
from d2seg.checkpoint import SegCheckpointer, convert_mmseg_checkpoint, resolve_name
from d2seg.checkpoint import converted_cache
from d2seg.checkpoint.catalog import (
    checkpoint_table, from_scratch_warning, imagenet_weights_for, table_urls,
)
from d2seg.checkpoint.handlers import register_handlers
from d2seg.checkpoint.metadata import metadata_disagreement
from d2seg.data.datasets import dataset_metadata

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

NAME = "hrnet/fcn_hr18s_512x1024_40k_cityscapes"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Inputs this small gain nothing from threads; on a busy 2-core runner two spinning OpenMP
    threads make each forward many times slower (as in tests/parity)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mmseg_file(tmp_path_factory):
    """mmseg's own model of NAME saved as mmseg 0.x publishes it, with Cityscapes' meta."""
    from mmseg.datasets import CityscapesDataset

    model = mmseg_peer.build_mmseg_model(mmseg_peer.mmseg_config(NAME))
    data = {"meta": {"mmseg_version": "0.30.0", "CLASSES": CityscapesDataset.CLASSES,
                     "PALETTE": CityscapesDataset.PALETTE},
            "state_dict": model.state_dict()}
    path = str(tmp_path_factory.mktemp("mmseg") / "ckpt.pth")
    torch.save(data, path)
    return path


@pytest.fixture
def published(mmseg_file, tmp_path, monkeypatch):
    """NAME's table entry -> the mmseg file, served by a local mirror; a fresh $FVCORE_CACHE."""
    data = open(mmseg_file, "rb").read()
    stem = NAME.split("/")[1]
    path = (f"/mmsegmentation/v0.5/hrnet/{stem}/{stem}_20200101_000000-"
            f"{hashlib.sha256(data).hexdigest()[:8]}.pth")
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    register_handlers()
    with FileServer() as server:
        server.add(path, data)
        monkeypatch.setenv("D2SEG_MIRROR", server.url)
        monkeypatch.setitem(checkpoint_table()["configs"], NAME, {
            "weights": "https://download.openmmlab.com" + path, "pretrained": None})
        yield server, path
    register_handlers()


def cpu_config(name):
    cfg = zoo.get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, 32, 48, generator=g) * 255
    with torch.no_grad():
        return model([{"image": img, "height": 32, "width": 48}])[0]["sem_seg"]


@pytest.fixture
def conversions(monkeypatch):
    calls = []
    real = converted_cache.load_mmseg_checkpoint

    def counting(src):
        calls.append(src)
        return real(src)

    monkeypatch.setattr(converted_cache, "load_mmseg_checkpoint", counting)
    return calls


def test_get_trained_end_to_end_equals_converting_by_hand_and_converts_once(
        published, mmseg_file, tmp_path, conversions):
    server, path = published
    assert zoo.get_checkpoint_url(NAME) == "https://download.openmmlab.com" + path
    cfg = zoo.get_config(NAME, trained=True)
    assert cfg.MODEL.WEIGHTS == "mmseg://" + NAME

    model = zoo.get(NAME, trained=True, device="cpu")
    assert not model.training
    assert server.requests[path] == 1 and len(conversions) == 1
    download = resolve_name("mmseg://" + NAME)
    cached = os.path.join(os.environ["FVCORE_CACHE"], download.split("openmmlab.com/")[1])
    assert os.path.isfile(converted_cache.converted_path(cached))

    # by hand: tools/convert_mmseg_checkpoint.py's function, loaded into the same config's model
    by_hand = str(tmp_path / "by_hand.pth")
    convert_mmseg_checkpoint(mmseg_file, by_hand)
    ref = build_model(cpu_config(NAME)).eval()
    SegCheckpointer(ref).load(by_hand)
    expected = logits(ref)
    assert torch.equal(logits(model), expected)

    # a second start (fresh handlers): neither downloaded nor converted again, same model
    register_handlers()
    again = zoo.get(NAME, trained=True, device="cpu")
    assert server.requests[path] == 1 and len(conversions) == 1
    assert torch.equal(logits(again), expected)


def test_get_without_a_released_checkpoint_names_the_config():
    name = "fcn/fcn_r50-d8_480x480_40k_pascal_context"
    for call in (zoo.get_checkpoint_url, lambda n: zoo.get_config(n, trained=True)):
        with pytest.raises(KeyError, match=f"{name}.*released no checkpoint"):
            call(name)


def _metadata_records(caplog):
    # a set: the record reaches caplog through its handler and through the root logger
    return sorted({r.getMessage() for r in caplog.records
                   if r.name == "d2seg.checkpoint.metadata" and r.levelno == logging.WARNING})


def test_checkpoint_classes_and_palette_are_checked_against_the_dataset(
        mmseg_file, tmp_path, caplog):
    logging.getLogger("d2seg.checkpoint.metadata").addHandler(caplog.handler)
    dataset = zoo.get_config(NAME).DATASETS.TEST[0]
    meta = dataset_metadata(dataset)  # Detectron2's Cityscapes, with mmseg's palette from d2seg
    data = torch.load(mmseg_file, weights_only=False)
    model = build_model(cpu_config(NAME)).eval()
    with caplog.at_level(logging.WARNING):
        SegCheckpointer(model, dataset=dataset).load(mmseg_file)
    assert _metadata_records(caplog) == []  # Cityscapes' checkpoint, Cityscapes' metadata

    classes = list(data["meta"]["CLASSES"])
    classes[3] = "not-" + classes[3]
    data["meta"]["CLASSES"] = tuple(classes)
    other = str(tmp_path / "other.pth")
    torch.save(data, other)
    with caplog.at_level(logging.WARNING):
        SegCheckpointer(model, dataset=dataset).load(other)
    [msg] = _metadata_records(caplog)
    assert f"class 3 is 'not-{meta.stuff_classes[3]}'" in msg and dataset in msg

    palette = [list(c) for c in meta.stuff_colors]
    palette[5] = [1, 2, 3]
    msg = metadata_disagreement({"classes": meta.stuff_classes, "palette": palette}, meta)
    assert f"class 5 ('{meta.stuff_classes[5]}') is [1, 2, 3]" in msg
    assert metadata_disagreement({"classes": meta.stuff_classes,
                                  "palette": meta.stuff_colors}, meta) is None


@pytest.fixture(scope="module")
def zoo_configs():
    """Every shipped config but the _base_ files, loaded once: {name: cfg}."""
    return {n: zoo.get_config(n) for n in zoo.list_configs() if not n.startswith("_base_/")}


def test_every_shipped_config_names_weights_that_resolve_to_the_table(zoo_configs):
    """Every config whose backbone has ImageNet weights (mmseg's widths) names them, resolving to
    a URL of the table; mmseg's configs name exactly what mmseg's config loads. Only narrow
    from-scratch models (the quickstart's), mmseg's own from-scratch configs (BiSeNetV1, ICNet,
    LR-ASPP "scratch"), the CamVid LR-ASPP of docs/deployment.md (trained here from scratch)
    and ViT/BEiT/MAE/SETR/DPT (mmseg loads a local pretrain/*.pth, which their yaml names) say
    MODEL.WEIGHTS ""."""
    urls = table_urls()
    table = checkpoint_table()["configs"]
    unnamed, mmseg_scratch, local = [], 0, 0
    for name, cfg in zoo_configs.items():
        weights, backbone_weights = cfg.MODEL.WEIGHTS, imagenet_weights_for(cfg)
        entry = table.get(name[:-len(".yaml")])
        if not weights:
            if entry is not None and (entry["pretrained"] or "").lstrip("./").startswith(
                    "pretrain/"):  # ViT/BEiT/MAE: a file mmseg's converters write, never published
                with open(zoo.get_config_file(name)) as f:  # the yaml names it for the user
                    assert entry["pretrained"] in f.read(), name
                local += 1
            elif entry is not None and entry["pretrained"] is None:
                mmseg_scratch += backbone_weights is not None
            elif backbone_weights is not None and name != "camvid/lraspp_m-v3-d8_camvid.yaml":
                unnamed.append(name)
            continue
        url = weights if weights.startswith("http") else resolve_name(weights)
        assert url in urls, f"{name}: MODEL.WEIGHTS {weights} -> {url} is not in the table"
        if entry is not None:  # the ImageNet weights mmseg's config of the same name loads
            assert weights == entry["pretrained"], name
        if not weights.startswith("http"):  # weights of this backbone's depth/width/stem
            assert weights == backbone_weights, name
    assert zoo_configs["quickstart.yaml"].MODEL.WEIGHTS == ""  # from scratch on purpose
    assert unnamed == [], f"{len(unnamed)} zoo configs train from scratch: {unnamed[:5]} ..."
    assert mmseg_scratch == 13  # BiSeNetV1 5, ICNet 6, LR-ASPP 2: from scratch as in mmseg
    assert local == 25  # ViT/DeiT 11, BEiT 4, MAE 2, SETR 7, DPT 1


def test_from_scratch_warning_names_what_mmseg_loads(zoo_configs):
    table = checkpoint_table()["configs"]
    checked = 0
    for name, cfg in zoo_configs.items():
        entry = table.get(name[:-len(".yaml")])
        pretrained = entry and entry["pretrained"]
        if not pretrained or "://" not in pretrained or pretrained.startswith("http"):
            continue
        cfg = cfg.clone()
        cfg.MODEL.WEIGHTS = ""
        assert imagenet_weights_for(cfg) == entry["pretrained"], name
        assert entry["pretrained"] in from_scratch_warning(cfg)
        checked += 1
    assert checked > 100
    assert from_scratch_warning(zoo.get_config("quickstart")) is None  # narrow: no ImageNet init


def test_trainer_warns_when_a_zoo_model_starts_from_scratch(tmp_path, caplog):
    from d2seg.engine import Trainer

    # the quickstart's data and schedule, with the widths of mmseg's ResNet-18-V1c
    cfg = zoo.get_config("quickstart")
    cfg.merge_from_list(["MODEL.RESNETS.STEM_OUT_CHANNELS", 64, "MODEL.RESNETS.RES2_OUT_CHANNELS",
                         64, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
                         "DATALOADER.NUM_WORKERS", 0])
    logging.getLogger("d2seg.engine.trainer").addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING):
        Trainer(cfg).resume_or_load(resume=False)
    msgs = [r.getMessage() for r in caplog.records if r.name == "d2seg.engine.trainer"]
    assert any("open-mmlab://resnet18_v1c" in m and "from scratch" in m for m in msgs), msgs


def test_convert_tool_takes_a_name(published, mmseg_file, tmp_path):
    import convert_mmseg_checkpoint as tool

    dst = str(tmp_path / "converted.pth")
    assert tool.main(["mmseg://" + NAME, dst]) == 0
    by_name = torch.load(dst, weights_only=False)["model"]
    by_hand, _ = convert_mmseg_checkpoint(mmseg_file)
    assert by_name.keys() == by_hand["model"].keys()
    assert all(torch.equal(by_name[k], by_hand["model"][k]) for k in by_name)


def test_released_checkpoints_meta_agrees_with_the_configs_datasets(zoo_configs):
    """No false alarm: the CLASSES/PALETTE of the mmseg dataset a released checkpoint was trained
    on (what its meta carries) agree with the metadata of the datasets the config names."""
    from mmseg.datasets import DATASETS

    table = checkpoint_table()["configs"]
    checked = {}
    for name, cfg in zoo_configs.items():
        entry = table.get(name[:-len(".yaml")])
        datasets = [d for d in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
                    if d not in checked and MetadataCatalog.get(d).get("stuff_classes", None)]
        if not entry or not entry["weights"] or not datasets:
            continue
        cls = DATASETS.get(mmseg_peer.mmseg_config(name[:-len(".yaml")]).data.test.type)
        meta = {"classes": list(cls.CLASSES), "palette": [list(c) for c in cls.PALETTE]}
        for d in datasets:
            checked[d] = metadata_disagreement(meta, dataset_metadata(d), name)
    assert len(checked) >= 4  # Cityscapes, ADE20K, VOC, Pascal Context at least
    assert {d: m for d, m in checked.items() if m} == {}
