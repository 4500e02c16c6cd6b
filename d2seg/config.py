"""d2seg's config keys, added to a Detectron2 config without changing any value it already has.

d2seg is a guest in Detectron2 projects: :func:`add_d2seg_config` only *adds* keys that are not
there yet. Every value of ``detectron2.config.get_cfg()`` (and of keys a project added before, such
as DeepLab's ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``) stays as it is; d2seg's own choices for
Detectron2's keys (``META_ARCHITECTURE: EncoderDecoder``, ``SEM_SEG_HEAD.NAME: FCNHead``, widths,
SyncBN, 19 classes, ...) live in ``configs/_base_/``, which every d2seg config inherits.

Keys Detectron2 already has keep their meaning (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``,
``IGNORE_VALUE``, ``NORM``, ``LOSS_WEIGHT``, ``CONVS_DIM`` = mmseg's ``channels``, ``INPUT.CROP``,
``SOLVER.*``); so do keys shared with Detectron2's projects (DeepLab's ``RESNETS.STEM_TYPE`` and
``SOLVER.POLY_LR_POWER``, Mask2Former's ``SOLVER.OPTIMIZER`` and ``INPUT.SIZE_DIVISIBILITY``).
Detectron2 keys that d2seg's models do not read are refused when set (:func:`check_detectron2_keys`).
What every decode head shares sits in a *head node*; the same schema is used by
``MODEL.SEM_SEG_HEAD`` (the decode head), ``MODEL.AUX_HEAD`` (auxiliary head, NAME "" = none) and
``MODEL.CASCADE_HEAD`` (the first stage of a cascade, e.g. OCRNet's FCN stage). What one method
needs sits in its own node (``MODEL.PSP_HEAD``, ``MODEL.ASPP_HEAD``, ...), with mmseg's values
from ``configs/_base_/models/*_r50-d8.py`` as defaults.
"""
import copy
from functools import lru_cache

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .data.datasets.from_config import add_folder_dataset_config

__all__ = ["add_d2seg_config", "add_head_node_keys", "check_detectron2_keys",
           "register_config_keys", "UNHONOURED_DETECTRON2_KEYS"]

# functions (keys: CN) -> None that add a model family's keys, declared next to its code
_FAMILY_KEYS = []


def register_config_keys(add_keys):
    """Decorator for a model family's ``add_keys(keys)``, which adds its keys and defaults to the
    tree ``keys`` (e.g. ``keys.MODEL.MIT = CN()``), so that a family's code and its config keys sit
    in one module. :func:`add_d2seg_config` copies them into a config without overwriting."""
    _FAMILY_KEYS.append(add_keys)
    _d2seg_keys.cache_clear()
    return add_keys


def add_head_node_keys(node: CN, **overrides) -> CN:
    """Adds the keys every decode head reads (mmseg's ``BaseDecodeHead`` + ``FCNHead`` arguments)."""
    node.NAME = ""  # registered name in SEM_SEG_HEADS_REGISTRY ("" = no head)
    node.IN_FEATURES = ["res5"]  # backbone features the head reads (mmseg's in_index)
    node.INPUT_TRANSFORM = ""  # "" (single input), "resize_concat" or "multiple_select"
    node.CONVS_DIM = 512  # mmseg's `channels`: width of the head's convs
    node.NORM = "SyncBN"  # norm of the head's convs, see detectron2.layers.get_norm
    node.NORM_EPS = 0.0  # eps of those norms (mmseg's norm_cfg eps); 0 = the layer's default
    node.NORM_MOMENTUM = 0.0  # their running-stat momentum (norm_cfg momentum); 0 = default
    node.DROPOUT = 0.1  # Dropout2d before the classifier; <= 0 disables it (mmseg dropout_ratio)
    node.ALIGN_CORNERS = False  # align_corners of every bilinear resize of this head
    node.LOSS_WEIGHT = 1.0  # weight of this head's loss
    node.CLASS_WEIGHT = []  # per-class cross-entropy weights; [] = uniform
    # mmseg's default (False) divides the loss by all pixels, ignored ones included
    node.LOSS_AVG_NON_IGNORE = False
    # mmseg's CrossEntropyLoss(use_sigmoid=True): per-class sigmoid BCE on one-hot labels
    node.LOSS_USE_SIGMOID = False
    node.NUM_CONVS = 2  # FCN-style heads: number of convs before the classifier
    node.KERNEL_SIZE = 3  # FCN-style heads: kernel size of those convs
    node.DILATION = 1  # FCN-style heads: dilation of those convs
    node.CONCAT_INPUT = True  # FCN-style heads: concat the input with the conv output (conv_cat)
    # mmseg's OHEMPixelSampler on this head's loss: the loss keeps only the hardest pixels,
    # OHEM_MIN_KEPT per image (0 = no sampler, every pixel counts)
    node.OHEM_MIN_KEPT = 0
    # hard = true-class probability below max(OHEM_THRESH, the MIN_KEPT-th lowest);
    # None = the OHEM_MIN_KEPT pixels of highest loss (mmseg's thresh=None)
    node.OHEM_THRESH = None
    for k, v in overrides.items():
        setattr(node, k, v)
    return node


def add_d2seg_config(cfg: CN) -> None:
    """Adds d2seg's keys to a Detectron2 config (from ``detectron2.config.get_cfg()``, before or
    after a project's ``add_*_config``): keys already there keep their values."""
    _add_missing(cfg, _d2seg_keys())
    add_folder_dataset_config(cfg)  # DATASETS.FOLDER: datasets declared in the config


def _add_missing(cfg: CN, keys: CN) -> None:
    for name, value in keys.items():
        if name not in cfg:
            setattr(cfg, name, copy.deepcopy(value))
        elif isinstance(value, CN) and isinstance(cfg[name], CN):
            _add_missing(cfg[name], value)


@lru_cache(maxsize=None)
def _d2seg_keys() -> CN:
    """d2seg's keys with their defaults, as a tree over Detectron2's nodes (read-only: copied
    into a config by :func:`_add_missing`). Where Detectron2 already has a key (the head node's
    NAME, IN_FEATURES, CONVS_DIM, NORM in SEM_SEG_HEAD), its value is kept."""
    _C = CN()
    for node in ("MODEL.SEM_SEG_HEAD", "MODEL.RESNETS", "INPUT.CROP", "SOLVER.AMP",
                 "TEST.AUG", "DATALOADER"):
        parent = _C
        for part in node.split("."):
            parent = parent.setdefault(part, CN())

    # ---- decode heads ------------------------------------------------------------------------
    # NUM_CLASSES and IGNORE_VALUE (Detectron2's keys) are read from SEM_SEG_HEAD by every head.
    add_head_node_keys(_C.MODEL.SEM_SEG_HEAD)
    # Auxiliary head on res4 (mmseg's auxiliary_head); NAME "" = none.
    _C.MODEL.AUX_HEAD = add_head_node_keys(
        CN(), NAME="", IN_FEATURES=["res4"], CONVS_DIM=256, NUM_CONVS=1, CONCAT_INPUT=False,
        LOSS_WEIGHT=0.4,
    )
    # First stage of a cascade segmentor (CascadeEncoderDecoder, OCRNet); NAME "" = none.
    _C.MODEL.CASCADE_HEAD = add_head_node_keys(
        CN(), NAME="", IN_FEATURES=["res4"], CONVS_DIM=256, NUM_CONVS=1, CONCAT_INPUT=False,
        LOSS_WEIGHT=0.4,
    )

    _C.MODEL.PSP_HEAD = CN()
    _C.MODEL.PSP_HEAD.POOL_SCALES = [1, 2, 3, 6]  # PSPHead's pyramid pooling bins

    _C.MODEL.ASPP_HEAD = CN()
    _C.MODEL.ASPP_HEAD.DILATIONS = [1, 12, 24, 36]  # ASPP branch dilations (1 = 1x1 branch)
    # DeepLabV3+ low-level branch: feature ("" = none), its channels after the 1x1 projection
    _C.MODEL.ASPP_HEAD.C1_IN_FEATURE = "res2"
    _C.MODEL.ASPP_HEAD.C1_CHANNELS = 48

    _C.MODEL.PSA_HEAD = CN()
    _C.MODEL.PSA_HEAD.MASK_SIZE = [97, 97]  # attention window (h, w); 66x66 in ADE20K configs
    _C.MODEL.PSA_HEAD.PSA_TYPE = "bi-direction"  # "collect", "distribute" or "bi-direction"
    _C.MODEL.PSA_HEAD.COMPACT = False  # mmseg's compact mode (transpose the attention)
    _C.MODEL.PSA_HEAD.SHRINK_FACTOR = 2  # features are downsampled by this before attention
    _C.MODEL.PSA_HEAD.NORMALIZATION_FACTOR = 1.0  # attention output is divided by this
    _C.MODEL.PSA_HEAD.PSA_SOFTMAX = True  # softmax over the attention window

    _C.MODEL.GC_HEAD = CN()
    _C.MODEL.GC_HEAD.RATIO = 0.25  # bottleneck ratio of the context block
    _C.MODEL.GC_HEAD.POOLING_TYPE = "att"  # "att" (attention pooling) or "avg"
    _C.MODEL.GC_HEAD.FUSION_TYPES = ["channel_add"]  # "channel_add" and/or "channel_mul"

    _C.MODEL.NL_HEAD = CN()
    _C.MODEL.NL_HEAD.REDUCTION = 2  # inter channels = channels // reduction
    _C.MODEL.NL_HEAD.USE_SCALE = True  # divide pairwise weights by sqrt(inter channels)
    _C.MODEL.NL_HEAD.MODE = "embedded_gaussian"  # pairwise function

    _C.MODEL.CC_HEAD = CN()
    _C.MODEL.CC_HEAD.RECURRENCE = 2  # times the (single, shared) criss-cross block is applied

    _C.MODEL.DA_HEAD = CN()
    _C.MODEL.DA_HEAD.PAM_CHANNELS = 64  # key/query channels of the position attention module

    _C.MODEL.ANN_HEAD = CN()
    _C.MODEL.ANN_HEAD.PROJECT_CHANNELS = 256  # key/query/value channels of AFNB and APNB
    _C.MODEL.ANN_HEAD.QUERY_SCALES = [1]  # query downsampling scales
    _C.MODEL.ANN_HEAD.KEY_POOL_SCALES = [1, 3, 6, 8]  # PPM bins pooled into keys/values

    _C.MODEL.OCR_HEAD = CN()
    _C.MODEL.OCR_HEAD.OCR_CHANNELS = 256  # key/query channels of the object attention block
    _C.MODEL.OCR_HEAD.SCALE = 1  # factor on the logits before the gather softmax; > 1 unsupported

    _C.MODEL.UPER_HEAD = CN()
    _C.MODEL.UPER_HEAD.POOL_SCALES = [1, 2, 3, 6]  # PPM bins on the top feature

    # ---- backbones ---------------------------------------------------------------------------
    # build_dilated_resnet_backbone reads MODEL.RESNETS: DEPTH, NORM, STEM_OUT_CHANNELS,
    # RES2_OUT_CHANNELS, STRIDE_IN_1X1 (True = caffe style), OUT_FEATURES, and these:
    # "deeplab": three 3x3 convs, STEM_OUT_CHANNELS / 2, / 2, STEM_OUT_CHANNELS wide (mmseg's
    # deep_stem, ResNetV1c; Detectron2 DeepLab's stem) or "basic" (7x7 conv); the key and its
    # values are those of Detectron2's DeepLab project
    _C.MODEL.RESNETS.STEM_TYPE = "basic"
    _C.MODEL.RESNETS.STAGE_STRIDES = [1, 2, 1, 1]  # stride of res2..res5 (OS8)
    _C.MODEL.RESNETS.STAGE_DILATIONS = [1, 1, 2, 4]  # dilation of res2..res5 (OS8)
    # first block of a dilated stage uses dilation // 2 (mmseg's contract_dilation)
    _C.MODEL.RESNETS.CONTRACT_DILATION = True
    # mmseg's multi_grid: res5's blocks use these dilations (one per block, replacing the stage
    # dilation, as mmseg's ResLayer does); [] = the stage dilation (DeepLabV3 D16-MG124: 1, 2, 4).
    # Not DeepLab's RES5_MULTI_GRID, whose values multiply RES5_DILATION.
    _C.MODEL.RESNETS.RES5_DILATION_PER_BLOCK = []
    # without ImageNet weights: each residual block's last norm starts at 0 (mmseg's ResNet
    # zero_init_residual, its default); convs Kaiming fan_out, norms 1/0 (d2seg/modeling/backbone)
    _C.MODEL.RESNETS.ZERO_INIT_RESIDUAL = True

    # HRNetV2 (build_hrnet_backbone), mmseg's `extra` with W18 defaults: stage 1 = Bottlenecks,
    # stages 2-4 = HR modules of BasicBlocks on 2, 3, 4 branches. W18-Small and W48: see
    # configs/_base_/models/fcn_hr18s.yaml and fcn_hr48.yaml.
    _C.MODEL.HRNET = CN()
    _C.MODEL.HRNET.STAGE1_CHANNELS = 64  # bottleneck width of stage 1 (its output is 4x this)
    _C.MODEL.HRNET.BRANCH_CHANNELS = [18, 36, 72, 144]  # hr1..hr4 widths (W48: 48, 96, 192, 384)
    _C.MODEL.HRNET.NUM_MODULES = [1, 1, 4, 3]  # HR modules per stage; stage 1: 1 (W18-Small: 1,1,3,2)
    _C.MODEL.HRNET.NUM_BLOCKS = [4, 4, 4, 4]  # blocks per branch in stages 1-4 (W18-Small: 2s)
    _C.MODEL.HRNET.NORM = "SyncBN"  # norm of all HRNet convs
    _C.MODEL.HRNET.OUT_FEATURES = ["hr1", "hr2", "hr3", "hr4"]  # branch outputs, stride 4..32

    # ---- data ------------------------------------------------------------------------------
    # mmseg's Resize: keep-ratio resize inside (long, short) = IMG_SCALE x a ratio from RATIO_RANGE
    _C.INPUT.IMG_SCALE = [2048, 1024]
    _C.INPUT.RATIO_RANGE = [0.5, 2.0]  # train-time ratio range; [] = fixed IMG_SCALE
    _C.INPUT.TEST_IMG_SCALE = [2048, 1024]  # keep-ratio resize at test time; [] = no resize
    # mmseg's ResizeToMultiple(size_divisor) after the test resize (every TTA view too): the
    # image is resized again (bilinear) so both sides are rounded up to a multiple; 0 = off
    _C.INPUT.TEST_SIZE_DIVISOR = 0
    _C.INPUT.SIZE_DIVISIBILITY = 0  # pad training batches to a multiple of this (0 = no)
    # mmseg's cat_max_ratio of RandomCrop (1.0 = off; the key of Detectron2's DeepLab project)
    _C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    _C.INPUT.PHOTOMETRIC_DISTORTION = True  # mmseg's PhotoMetricDistortion
    # mmseg's RandomRotate (after RandomFlip): with probability PROB the image and label are
    # rotated about their centre by an angle ~ U(DEGREE) (cv2.warpAffine as mmcv.imrotate,
    # same size: the corners are cut off)
    _C.INPUT.ROTATE = CN()
    _C.INPUT.ROTATE.PROB = 0.0  # rotation probability; 0 = no RandomRotate step
    _C.INPUT.ROTATE.DEGREE = [-30.0, 30.0]  # (min, max) angle in degrees (positive: clockwise)
    _C.INPUT.ROTATE.PAD_VALUE = 0  # image value of the uncovered corners (mmseg's pad_val)
    _C.INPUT.ROTATE.SEG_PAD_VALUE = 255  # label value there (mmseg's seg_pad_val: ignored)
    _C.INPUT.REDUCE_ZERO_LABEL = False  # 0 -> 255, k -> k-1 when reading labels (ADE20K)
    # Validate every label map (values in [0, NUM_CLASSES) or IGNORE_VALUE, size = image size).
    _C.INPUT.CHECK_LABELS = True
    # Skip (and log) a sample whose image/label cannot be read instead of failing.
    _C.INPUT.SKIP_BAD_SAMPLES = False
    _C.DATALOADER.SEED_WORKERS = True  # seed workers from SEED for reproducible augmentation

    # ---- test --------------------------------------------------------------------------------
    _C.TEST.MODE = "whole"  # "whole" or "slide" inference (mmseg's test_cfg.mode)
    _C.TEST.CROP_SIZE = [769, 769]  # slide: window (h, w)
    _C.TEST.STRIDE = [513, 513]  # slide: step (h, w)
    _C.TEST.AUG.RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # multi-scale test ratios (TEST.AUG)
    # mmseg's Resize(min_size=...) in the test views: a view whose short side would be below it
    # is resized to that short side instead (its long side then unbounded; BEiT's/MAE's _ms
    # tests keep every view at least their fixed input size); 0 = no minimum
    _C.TEST.AUG.MIN_SIZE = 0
    # With TEST.AUG.ENABLED: True = the augmented test is THE test (periodic evaluation while
    # training, the final one, --eval-only), as in mmseg configs whose test_pipeline itself has
    # several views (MultiScaleFlipAug with img_ratios / flip=True: mmseg runs aug_test). False =
    # single-scale evaluation, plus one augmented test after training (mmseg's --aug-test).
    _C.TEST.AUG.ALWAYS = False
    # Metrics the evaluator reports besides mIoU / mACC / fwIoU / pACC (always there): any of
    # "mDice" (+ per-class Dice) and "mFscore" (+ Fscore, Precision, Recall per class; beta 1),
    # mmseg's `evaluation.metric`, from the same confusion matrix
    _C.TEST.METRICS = ["mIoU"]

    # ---- solver ------------------------------------------------------------------------------
    _C.SOLVER.POLY_LR_POWER = 0.9  # WarmupPolyLR: lr = (base - min) * (1 - t)^power + min
    _C.SOLVER.POLY_LR_MIN_LR = 1e-4  # WarmupPolyLR: mmseg's min_lr (absolute)
    # "SGD" (Detectron2's, with MOMENTUM / NESTEROV) or "AdamW" (mmseg's rsb-pretrain configs);
    # both take Detectron2's parameter groups (WEIGHT_DECAY_NORM, WEIGHT_DECAY_BIAS, ...)
    _C.SOLVER.OPTIMIZER = "SGD"  # case-insensitive ("ADAMW" as in Mask2Former's configs)
    _C.SOLVER.BETAS = (0.9, 0.999)  # AdamW: torch's / mmcv's defaults
    _C.SOLVER.EPS = 1e-8  # AdamW
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE also takes "full_model": one norm over all gradients
    # (mmcv's OptimizerHook grad_clip=dict(max_norm=CLIP_VALUE, norm_type=NORM_TYPE))

    # ---- speed (d2seg/modeling/speed.py, tools/benchmark.py, docs/benchmark.md) --------------
    # SOLVER.AMP.ENABLED: training AND inference under autocast in this dtype (float16 or
    # bfloat16; mmseg's fp16 configs train and test in fp16); the one AMP dtype key
    _C.SOLVER.AMP.DTYPE = "float16"
    # float16 loss scale: 0 = torch's dynamic GradScaler; > 0 = static, as mmcv's
    # Fp16OptimizerHook(loss_scale=512.) of mmseg's fp16 configs (steps with inf/nan gradients
    # are still skipped, the scale never changes)
    _C.SOLVER.AMP.LOSS_SCALE = 0.0
    # mmcv's GradientCumulative(Fp16)OptimizerHook(cumulative_iters=N): each iteration's loss
    # / N is back-propagated and the optimizer steps (with clipping, the loss scaler) every N
    # iterations on the summed gradients; the last MAX_ITER % N iterations form a group of their
    # own, their losses divided by its size. 1 = a step every iteration
    _C.SOLVER.ACCUMULATE_ITERS = 1
    _C.MODEL.SPEED = CN()
    # CPU fp32 3x3 stride-1 convs by Winograd: "" = direct, "F2" = F(2x2,3x3) (>= 256 channels,
    # undilated; rounding as direct), "F4" = F(4x4,3x3) (>= 128 channels, dilation <= 4; faster,
    # rounding ~1e-6 relative); larger dilations skip the rows of zero padding
    _C.MODEL.SPEED.WINOGRAD = ""
    # CPU: 1x1 convs as one GEMM over the activations' memory (no oneDNN reorders; rounding)
    _C.MODEL.SPEED.GEMM_1X1 = False
    _C.MODEL.SPEED.FUSE_BN = True  # optimize_for_inference folds BN into the convs
    _C.MODEL.SPEED.CHANNELS_LAST = False  # NHWC weights and activations
    # attention of NonLocal/ANN/DANet/OCR by scaled_dot_product_attention (same maths, rounding)
    _C.MODEL.SPEED.FUSED_ATTENTION = False
    # compose a linear 1x1 projection into the 1x1 conv after it (ANN: the attention's
    # out_project into the fusion bottleneck; same maths, rounding; training too)
    _C.MODEL.SPEED.FOLD_PROJECTIONS = False
    _C.MODEL.SPEED.COMPILE = False  # torch.compile the backbone and heads (first call compiles)
    for add_keys in _FAMILY_KEYS:
        add_keys(_C)
    return _C


# Detectron2 keys that d2seg's models and data pipeline do not read, with the d2seg key that does
# the job: setting one (to anything but Detectron2's default) is an error, not a silent no-op.
UNHONOURED_DETECTRON2_KEYS = {
    "INPUT.MIN_SIZE_TRAIN": "INPUT.IMG_SCALE and INPUT.RATIO_RANGE (mmseg's Resize)",
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "INPUT.RATIO_RANGE (a ratio drawn uniformly in the range)",
    "INPUT.MAX_SIZE_TRAIN": "INPUT.IMG_SCALE (long and short side bounds)",
    "INPUT.MIN_SIZE_TEST": "INPUT.TEST_IMG_SCALE",
    "INPUT.MAX_SIZE_TEST": "INPUT.TEST_IMG_SCALE",
    "TEST.AUG.MIN_SIZES": "TEST.AUG.RATIOS (ratios of INPUT.TEST_IMG_SCALE)",
    "TEST.AUG.MAX_SIZE": "TEST.AUG.RATIOS (ratios of INPUT.TEST_IMG_SCALE)",
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": "nothing: d2seg's heads resize their logits to the input",
    "MODEL.RESNETS.RES5_DILATION": "MODEL.RESNETS.STAGE_DILATIONS (res2..res5)",
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": "nothing: d2seg's ResNet has no deformable convs",
    "DATALOADER.SAMPLER_TRAIN": "nothing: d2seg trains with its resumable sampler (same "
                                "stream after a resume; docs/reliability.md)",
}


@lru_cache(maxsize=None)
def _detectron2_defaults() -> dict:
    defaults = get_cfg()
    out = {}
    for key in UNHONOURED_DETECTRON2_KEYS:
        node = defaults
        for part in key.split("."):
            node = node[part]
        out[key] = _plain(node)
    return out


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_detectron2_keys(cfg: CN) -> None:
    """Raises a ValueError naming every Detectron2 key that the config sets but d2seg's models do
    not read, and the d2seg key that does the job (a d2seg model built from such a config would
    silently ignore it)."""
    bad = []
    for key, default in _detectron2_defaults().items():
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and _plain(node) != default:
            bad.append(f"{key}={_plain(node)!r} (d2seg's models read {UNHONOURED_DETECTRON2_KEYS[key]})")
    if bad:
        raise ValueError("Detectron2 keys that d2seg's models do not read are set: "
                         + "; ".join(bad) + ". Leave them at Detectron2's defaults.")
