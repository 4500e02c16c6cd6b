"""BiSeNetV1 (ResNet-18 and ResNet-50 context paths, narrow) with its decode and two auxiliary FCN
heads: d2seg vs MMSegmentation 0.30 with the same (randomised) weights, loaded from an mmseg-format
checkpoint file through SegCheckpointer. Logits, the three backbone outputs and the auxiliary
logits at 65x97 in eval mode; one training step's three losses and gradients; and mmseg's
in1k-pre init (open-mmlab://resnet18_v1c into the plain ResNet, strict=False) against d2seg's
MODEL.WEIGHTS load of the same file."""
import re

import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer
from test_parity_realtime import _assert_model_matches

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

MMSEG_CONFIG = "bisenetv1/bisenetv1_r18-d32_4x4_1024x1024_160k_cityscapes"
YAML = REPO_CONFIGS / "_base_/models/bisenetv1_r18-d32.yaml"
BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
      "MODEL.AUX_HEAD_2.NORM", "BN"]
# (depth, ResNet base width, spatial, context, out, decode channels, aux channels): ResNet-18 at
# width 16 (res4 64, res5 128) and ResNet-50 at bottleneck width 16 (res4 256, res5 512)
VARIANTS = {
    "r18": (18, 16, [16, 16, 16, 32], [32, 64, 128], 64, 64, 16),
    "r50": (50, 16, [32, 32, 32, 128], [128, 256, 512], 128, 128, 32),
}


def _configs(variant):
    depth, base, spatial, context, out, dec, aux = VARIANTS[variant]
    cfg = mmseg_peer.mmseg_config(MMSEG_CONFIG)
    cfg.model.backbone.update(spatial_channels=spatial, context_channels=context,
                              out_channels=out)
    cfg.model.backbone.backbone_cfg.update(depth=depth, stem_channels=base, base_channels=base)
    cfg.model.decode_head.update(in_channels=out, channels=dec)
    for head in cfg.model.auxiliary_head:
        head.update(in_channels=context[0], channels=aux)
    expansion = 4 if depth == 50 else 1
    opts = BN + ["MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.STEM_OUT_CHANNELS", base,
                 "MODEL.RESNETS.RES2_OUT_CHANNELS", base * expansion,
                 "MODEL.RESNETS.WIDTH_PER_GROUP", base,
                 "MODEL.BISENETV1.SPATIAL_CHANNELS", spatial,
                 "MODEL.BISENETV1.CONTEXT_CHANNELS", context, "MODEL.BISENETV1.OUT_CHANNELS", out,
                 "MODEL.SEM_SEG_HEAD.CONVS_DIM", dec, "MODEL.AUX_HEAD.CONVS_DIM", aux,
                 "MODEL.AUX_HEAD_2.CONVS_DIM", aux]
    return cfg, get_d2seg_cfg(YAML, opts)


def _pair(variant, tmp_path):
    """mmseg's model (random weights and BN statistics) and d2seg's, loaded from the mmseg
    checkpoint file by SegCheckpointer (format detection + key conversion, strict)."""
    mmseg_cfg, cfg = _configs(variant)
    ref = mmseg_peer.build_mmseg_model(mmseg_cfg)
    path = str(tmp_path / "mmseg.pth")
    torch.save({"meta": {}, "state_dict": ref.state_dict()}, path)
    model = build_model(cfg)
    ckpt = SegCheckpointer(model)
    ckpt.load(path)
    assert not ckpt.last_report.errors and not ckpt.last_report.aux_missing
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    return ref, model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bisenetv1_matches_mmseg(variant, tmp_path):
    ref, model = _pair(variant, tmp_path)
    # odd at every stride (33x49 ... 3x4): nearest upsampling to odd sizes
    _assert_model_matches(ref, model, ("fusion", "context8", "context16"), size=(65, 97))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bisenetv1_training_step_matches_mmseg(variant, tmp_path):
    """BN in training mode, dropout off: decode and both auxiliary cross-entropy losses, and the
    gradients they send to the spatial path, the ARMs and the ResNet."""
    ref, model = _pair(variant, tmp_path)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 66, 98, generator=g)
    label = torch.randint(0, 19, (2, 66, 98), generator=g)
    label[torch.rand(2, 66, 98, generator=g) < 0.2] = 255
    expected, got = mmseg_peer.training_losses(ref, model, img, label)
    pairs = [("loss_sem_seg", "decode.loss_ce"), ("loss_aux", "aux_0.loss_ce"),
             ("loss_aux_2", "aux_1.loss_ce")]
    assert set(got) == {k for k, _ in pairs}
    for ours, theirs in pairs:
        assert abs(got[ours].item() - expected[theirs].item()) <= 1e-5 * expected[theirs].item()
    sum(got.values()).backward()
    sum(expected[k] for _, k in pairs).backward()
    ours, theirs = model.backbone, ref.backbone
    grads = [
        (ours.spatial_path.layer1.weight, theirs.spatial_path.layer1.conv.weight),
        (ours.context_path.arm16.conv_layer.weight, theirs.context_path.arm16.conv_layer.conv.weight),
        (ours.ffm.conv_atten[0].weight, theirs.ffm.conv_atten[0].conv.weight),
        (ours.context_path.backbone.stem.conv1.weight, theirs.context_path.backbone.conv1.weight),
        (ours.context_path.backbone.res5[0].conv1.weight,
         theirs.context_path.backbone.layer4[0].conv1.weight),
    ]
    for a, b in grads:
        assert b.grad.abs().max() > 0
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4 * b.grad.abs().max().item())


def test_in1k_pre_loads_as_mmseg_does(tmp_path):
    """mmseg's *_in1k-pre_* configs: backbone_cfg.init_cfg = Pretrained(open-mmlab://resnet18_v1c)
    into a plain ResNet. Run mmseg's init_weights on a ResNetV1c file and d2seg's MODEL.WEIGHTS
    load of it: the same ResNet tensors come from the file (layer1-4), the same stay as built
    (conv1/bn1: PyTorch's default init in both, the deep-stem keys unused)."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models import build_segmentor
    from mmseg.models.backbones import ResNetV1c

    mmseg_cfg, cfg = _configs("r18")
    g = torch.Generator().manual_seed(3)
    v1c = ResNetV1c(depth=18, stem_channels=16, base_channels=16)
    sd = {k: (v if k.endswith("num_batches_tracked") else torch.randn(v.shape, generator=g))
          for k, v in v1c.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    path = str(tmp_path / "resnet18_v1c.pth")
    torch.save({"state_dict": sd}, path)

    mmseg_cfg.model.backbone.backbone_cfg.init_cfg = dict(type="Pretrained", checkpoint=path)
    mmseg_peer.syncbn_to_bn(mmseg_cfg.model)
    ref = build_segmentor(mmseg_cfg.model)
    ref.init_weights()
    resnet = ref.backbone.context_path.backbone.state_dict()
    from_file = {k for k, v in resnet.items() if k in sd and torch.equal(v, sd[k])}
    assert from_file == {k for k in resnet if k.startswith("layer")}
    assert not any(k.startswith("stem.") for k in resnet)

    model = build_model(cfg)
    ckpt = SegCheckpointer(model)
    ckpt.load(path)
    report = ckpt.last_report
    assert not report.errors, report.error_message()
    state = model.state_dict()
    prefix = "backbone.context_path.backbone."
    for k in from_file:  # the same tensors, under d2seg's names
        key = re.sub(r"^layer(\d)", lambda m: f"res{int(m[1]) + 1}", k)
        key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
        key = key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        assert torch.equal(state[prefix + key], resnet[k]), k
    assert set(report.loaded) == {k for k in state if k.startswith(prefix + "res")}
    # the 7x7 stem: PyTorch's construction init in both (|w| <= 1/sqrt(fan_in)), BN 1/0
    for w in (ref.backbone.context_path.backbone.conv1.weight,
              state[prefix + "stem.conv1.weight"]):
        assert w.abs().max() <= w[0].numel() ** -0.5
        assert 0.85 < w.std().item() * (3 * w[0].numel()) ** 0.5 < 1.15
    assert torch.all(state[prefix + "stem.conv1.norm.weight"] == 1)
    assert torch.all(ref.backbone.context_path.backbone.bn1.weight == 1)
