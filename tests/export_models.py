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
# SETR: a 2-layer ViT of 32 dims, 16-channel heads; no auxiliary heads (not exported)
_SETR = ["MODEL.VIT.EMBED_DIMS", 32, "MODEL.VIT.NUM_LAYERS", 2, "MODEL.VIT.NUM_HEADS", 2,
         "MODEL.VIT.IMG_SIZE", [64, 64], "MODEL.VIT.OUT_INDICES", [0, 1],
         "MODEL.AUX_HEAD_2.NAME", "", "MODEL.AUX_HEAD_3.NAME", "", "MODEL.AUX_HEAD_4.NAME", ""]
_SETR_UP = [*_SETR, "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["vit1"], "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]
# K-Net's update heads: 16-d kernels in updator rows of 8, 2 heads
_KNET = ["MODEL.KNET_HEAD.NUM_HEADS", 2, "MODEL.KNET_HEAD.FEEDFORWARD_CHANNELS", 32,
         "MODEL.KNET_HEAD.UPDATOR_IN_CHANNELS", 8, "MODEL.KNET_HEAD.UPDATOR_FEAT_CHANNELS", 8,
         "MODEL.KNET_HEAD.UPDATOR_OUT_CHANNELS", 8]

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
    "setr_naive": ("setr_naive", _SETR_UP),
    "setr_pup": ("setr_pup", _SETR_UP),
    "setr_mla": ("setr_mla", [*_SETR, "MODEL.NECK.IN_FEATURES", ["vit0", "vit1"],
                              "MODEL.NECK.OUT_CHANNELS", 16, "MODEL.NECK.MLA.NORM", "BN",
                              "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["mla0", "mla1"],
                              "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
                              "MODEL.SETR_MLA_HEAD.MLA_CHANNELS", 8]),
    "knet": ("knet_s3_fcn_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, *_KNET]),
    "knet_upernet": ("knet_s3_upernet_r50-d8", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, *_KNET]),
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
        if hasattr(head, "kernel_update_head"):  # K-Net: every stage's classifier, in turn
            _randomize_knet_stages(head, model.extract_feat(img), g)
        elif head is not None:
            feats = model.extract_feat(img)  # (through the neck, if any)
            logits = model.decode(feats) if head is model.decode_head else head(feats)[0]
            head.conv_seg.weight /= logits.abs().max() / 3
    return model


def _randomize_knet_stages(head, feats, g):
    # LayerNorms off their 1/0 init (else the tiny model's class kernels nearly coincide: argmax
    # ties everywhere), then stage 0's classifier (the generator's conv_seg) and each update
    # head's fc_mask scaled in turn, so every stage's logits are O(1)
    for m in head.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    layers = [head.kernel_generate_head.conv_seg] + [h.fc_mask for h in head.kernel_update_head]
    for i, layer in enumerate(layers):
        scale = head.stage_logits(feats)[i].abs().max() / 3
        layer.weight /= scale
        layer.bias /= scale


def tiny_model(method: str, opts=()):
    return randomize_(build_model(tiny_method_cfg(method, opts)))
