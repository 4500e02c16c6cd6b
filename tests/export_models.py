"""Tiny models of the 13 methods for the export tests: narrow widths through config overrides,
random BN statistics (so BN folding is not the identity) and logits of order 1."""
import torch
from torch import nn

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg

_RESNET = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.NORM", "BN",
           "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
           "MODEL.RESNETS.WIDTH_PER_GROUP", 16]
_HRNET = ["MODEL.HRNET.NORM", "BN", "MODEL.HRNET.STAGE1_CHANNELS", 8,
          "MODEL.HRNET.BRANCH_CHANNELS", [4, 8, 8, 8], "MODEL.HRNET.NUM_MODULES", [1, 1, 1, 1],
          "MODEL.HRNET.NUM_BLOCKS", [1, 1, 1, 1]]
_HEAD = ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5,
         "MODEL.AUX_HEAD.NAME", ""]

# method -> (base model config, extra overrides)
METHODS = {
    "fcn": ("fcn_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]),
    "pspnet": ("pspnet_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]),
    "psanet": ("psanet_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
                                 "MODEL.PSA_HEAD.MASK_SIZE", [7, 7]]),
    "deeplabv3": ("deeplabv3_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]),
    "deeplabv3plus": ("deeplabv3plus_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
                                               "MODEL.ASPP_HEAD.C1_CHANNELS", 8]),
    "upernet": ("upernet_r50", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]),
    "gcnet": ("gcnet_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]),
    "nonlocal": ("nonlocal_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]),
    "ccnet": ("ccnet_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]),
    "danet": ("danet_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
                               "MODEL.DA_HEAD.PAM_CHANNELS", 8]),
    "ann": ("ann_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
                           "MODEL.ANN_HEAD.PROJECT_CHANNELS", 8]),
    "hrnet": ("fcn_hr18", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 28]),
    "ocrnet": ("ocrnet_hr18", ["MODEL.CASCADE_HEAD.NORM", "BN", "MODEL.CASCADE_HEAD.CONVS_DIM", 28,
                               "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.OCR_HEAD.OCR_CHANNELS", 8,
                               ]),
}


def tiny_method_cfg(method: str, opts=()):
    yaml, extra = METHODS[method]
    backbone = _HRNET if "hr" in yaml else _RESNET
    return get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml",
                         [*backbone, *_HEAD, *extra, *opts])


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, then each classifier scaled so its logits are O(1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    for name, p in model.named_parameters():
        if name.endswith("gamma.scale") or name.endswith("gamma"):  # attention scales
            p.fill_(0.5)
    model.eval()
    img = torch.randn(1, 3, 64, 96, generator=g)
    for head in [getattr(model, "cascade_head", None), model.decode_head]:
        if head is not None:
            feats = model.extract_feat(img)  # (through the neck, if any)
            logits = model.decode(feats) if head is model.decode_head else head(feats)[0]
            head.conv_seg.weight /= logits.abs().max() / 3
    return model


def tiny_model(method: str, opts=()):
    return randomize_(build_model(tiny_method_cfg(method, opts)))
