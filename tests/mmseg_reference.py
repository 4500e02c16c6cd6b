"""Builds MMSegmentation 0.30 reference models for parity tests (test-only; d2seg never imports
mmseg). Tests using it call ``pytest.importorskip("mmseg")`` first."""
import sys
import types

import torch


def _stub_mmcv_ext():
    # mmcv.ops loads a compiled extension the pure-Python mmcv lacks; none of the models we
    # compare calls into it (PSAMask aside), so a stub module lets `import mmseg.models` work.
    if "mmcv._ext" not in sys.modules:
        mod = types.ModuleType("mmcv._ext")

        def __getattr__(name):
            if name.startswith("__"):
                raise AttributeError(name)

            def missing(*a, **k):
                raise RuntimeError(f"mmcv._ext.{name} is a stub (no compiled mmcv ops)")
            return missing

        mod.__getattr__ = __getattr__
        sys.modules["mmcv._ext"] = mod


def mmseg_config(name: str):
    """mmseg's Config for a config stem such as 'pspnet/pspnet_r50-d8_512x1024_80k_cityscapes'."""
    import os

    _stub_mmcv_ext()
    import mmseg
    from mmcv import Config

    root = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")
    return Config.fromfile(os.path.join(root, name + ".py"))


def _syncbn_to_bn(obj):
    if isinstance(obj, dict):
        if obj.get("type") == "SyncBN":
            obj["type"] = "BN"
        for v in obj.values():
            _syncbn_to_bn(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _syncbn_to_bn(v)


def build_mmseg_model(cfg):
    """An mmseg segmentor in eval mode with every parameter and BN statistic randomised, so that
    no branch is hidden behind a constant (zero-init convs, Scale(0), BN 1/0)."""
    _stub_mmcv_ext()
    from mmseg.models import build_segmentor

    cfg.model.pretrained = None
    cfg.model.backbone.pop("init_cfg", None)
    _syncbn_to_bn(cfg.model)
    model = build_segmentor(cfg.model, test_cfg=cfg.get("test_cfg"))
    randomize_(model)
    return model.eval()


@torch.no_grad()
def randomize_(model, seed=0):
    """Random weights of order 1/sqrt(fan_in) and BN statistics that keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        else:
            p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.75 if name.endswith("weight")
                    else torch.randn(p.shape, generator=g) * 0.1)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
