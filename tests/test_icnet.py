"""ICNet + ICNeck (narrow, BN): output names/widths/strides and odd grids (ceil-mode pool), the
from-scratch init, ImageNet ResNetV1c weights into the nested ResNet, config errors and ONNX
export with dynamic H x W."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer

TINY = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 8, "MODEL.ICNET.LAYER_CHANNELS", [16, 64],
        "MODEL.ICNET.PSP_OUT_CHANNELS", 16, "MODEL.ICNET.LIGHT_BRANCH_MIDDLE_CHANNELS", 8,
        "MODEL.ICNET.OUT_CHANNELS", [8, 16, 16], "MODEL.NECK.OUT_CHANNELS", 16,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 16,
        "MODEL.AUX_HEAD_2.CONVS_DIM", 16, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5] + [
    x for n in ("RESNETS", "ICNET", "NECK.ICNECK", "SEM_SEG_HEAD", "AUX_HEAD", "AUX_HEAD_2")
    for x in (f"MODEL.{n}.NORM", "BN")]


def tiny_model(opts=()):
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/icnet_r50-d8.yaml", TINY + list(opts))
    return build_model(cfg)


@torch.no_grad()
def test_outputs_strides_and_ceil_mode_grid():
    model = tiny_model().eval()
    assert {k: (v.channels, v.stride) for k, v in model.backbone.output_shape().items()} == {
        "sub1": (8, 8), "sub2": (16, 16), "sub4": (16, 32)}
    assert {k: (v.channels, v.stride) for k, v in model.neck.output_shape().items()} == {
        "x_24": (16, 16), "x_12": (16, 8), "cff_12": (16, 8)}
    feats = model.backbone(torch.randn(1, 3, 512, 1024))
    # the ceil-mode pool: 128x256 stem -> 65x129 (floor mode: 64x128) -> layer2 33x65
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        "sub1": (64, 128), "sub2": (33, 65), "sub4": (16, 32)}
    assert tuple(model.neck(feats)["x_24"].shape[-2:]) == (33, 65)
    assert model.encode_decode(torch.randn(2, 3, 67, 99)).shape == (2, 5, 67, 99)


def test_scratch_init_is_mmsegs():
    model = tiny_model()
    bb = model.backbone
    for conv in (bb.conv_sub1[0], bb.psp_bottleneck, model.neck.cff_24.conv_low):
        assert conv.bias is None and torch.all(conv.norm.weight == 1)
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.25 * (2 / fan_out) ** 0.5
    # mmseg's ResNet zero_init_residual: each block's last norm at 0
    assert torch.all(bb.backbone.res2[0].conv2.norm.weight == 0)


def test_training_step_reaches_every_branch():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    losses = model([{"image": torch.rand(3, 64, 96, generator=g) * 255,
                     "sem_seg": torch.randint(0, 5, (64, 96), generator=g)} for _ in range(2)])
    assert set(losses) == {"loss_sem_seg", "loss_aux", "loss_aux_2"}
    sum(losses.values()).backward()
    bb = model.backbone
    for p in (bb.conv_sub1[0].weight, bb.backbone.stem.conv1.weight, bb.psp_modules[0][1].weight):
        assert p.grad.abs().sum() > 0


def test_imagenet_resnet_v1c_loads_into_the_nested_resnet(tmp_path):
    """An open-mmlab resnet*_v1c file (mmseg's in1k-pre configs) fills backbone.backbone.; ICNet's
    own modules, the neck and the heads keep their init. The same file still fills a plain
    ResNet backbone at backbone."""
    from d2seg.checkpoint.mmseg import convert_mmseg_key

    model = tiny_model()
    resnet = model.backbone.backbone.state_dict()
    # the file in open-mmlab's names: invert d2seg's renaming on each key
    names = {convert_mmseg_key("backbone." + k, is_resnet=True): k
             for k in _v1c_names(model.backbone.backbone)}
    sd = {names["backbone." + k]: torch.randn_like(v.float()).to(v.dtype)
          for k, v in resnet.items()}
    sd["fc.weight"] = torch.randn(1000, 64)
    path = str(tmp_path / "resnet18_v1c.pth")
    torch.save({"state_dict": sd}, path)
    ckpt = SegCheckpointer(model)
    ckpt.load(path)
    rep = ckpt.last_report
    assert not rep.errors and "fc.weight" in rep.skipped
    assert set(rep.loaded) == {"backbone.backbone." + k for k in resnet}
    assert any(k.startswith("backbone.psp_bottleneck.") for k in rep.kept_init)
    got = model.backbone.backbone.stem.conv1.weight
    assert torch.equal(got, sd["stem.0.weight"])
    plain = build_model(get_d2seg_cfg(REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml", TINY[:6]))
    ckpt = SegCheckpointer(plain)
    ckpt.load(path)
    assert not ckpt.last_report.errors and torch.equal(plain.backbone.stem.conv1.weight, got)


def _v1c_names(resnet):
    """open-mmlab ResNetV1c names of a d2seg ResNet's state_dict."""
    import re

    out = []
    for k in resnet.state_dict():
        k = re.sub(r"^stem\.conv(\d)\.norm\.", lambda m: f"stem.{3 * int(m[1]) - 2}.", k)
        k = re.sub(r"^stem\.conv(\d)\.", lambda m: f"stem.{3 * int(m[1]) - 3}.", k)
        k = re.sub(r"^res(\d)\.", lambda m: f"layer{int(m[1]) - 1}.", k)
        k = re.sub(r"\.conv(\d)\.norm\.", r".bn\1.", k)
        k = k.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")
        out.append(k)
    return out


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"MODEL.ICNET.LAYER_CHANNELS=\[16, 32\] must be"):
        tiny_model(["MODEL.ICNET.LAYER_CHANNELS", [16, 32]])
    with pytest.raises(ValueError, match=r"OUT_CHANNELS=\[8, 16\] 3"):
        tiny_model(["MODEL.ICNET.OUT_CHANNELS", [8, 16]])
    with pytest.raises(ValueError, match="ICNeck needs 3 inputs"):
        tiny_model(["MODEL.NECK.IN_FEATURES", ["sub1", "sub2"]])
    with pytest.raises(ValueError, match=r"MODEL.NECK.IN_FEATURES=.*'sub8'"):
        tiny_model(["MODEL.NECK.IN_FEATURES", ["sub1", "sub2", "sub8"]])


def test_onnx_dynamic_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    model = tiny_model().eval()
    module = SegmentationExportModule(plain_for_export(model), labels=False).eval()
    path = str(tmp_path / "model.onnx")
    sizes = [(1, 64, 96), (2, 75, 101)]  # odd: the 0.5 resizes and the ceil-mode pool
    export(module, "onnx", path, torch.rand(sizes[0][0], 3, *sizes[0][1:]) * 255, dynamic=True)
    ok, figures = verify_export(module, "onnx", path, sizes)
    assert ok, figures
