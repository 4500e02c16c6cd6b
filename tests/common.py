"""Small configs and inputs shared by the tests."""
import torch

from detectron2.config import get_cfg

import d2seg

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def get_d2seg_cfg(config_file=None, opts=()):
    cfg = get_cfg()
    d2seg.add_d2seg_config(cfg)
    if config_file:
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def tiny_cfg(head="FCNHead", depth=18, width=16, num_classes=5, aux=True, opts=()):
    """A narrow ResNet-V1c-D8 with BN: the cheapest model that exercises every code path."""
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml")
    cfg.merge_from_list([
        "MODEL.RESNETS.DEPTH", depth,
        "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", width,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", width if depth < 50 else width * 4,
        "MODEL.RESNETS.WIDTH_PER_GROUP", width,
        "MODEL.SEM_SEG_HEAD.NAME", head,
        "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes,
        "MODEL.AUX_HEAD.NAME", "FCNHead" if aux else "",
        "MODEL.AUX_HEAD.NORM", "BN",
        "MODEL.AUX_HEAD.CONVS_DIM", 16,
    ])
    cfg.merge_from_list(list(opts))
    return cfg


def random_batch(n=2, h=64, w=64, num_classes=5, ignore_frac=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, num_classes, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < ignore_frac] = 255
        out.append({"image": torch.rand(3, h, w, generator=g) * 255, "sem_seg": label,
                    "height": h, "width": w})
    return out


def assert_matches_mmseg_steps(ref_steps, augs, img, label, seed, same_draws=True):
    """Runs mmseg's pipeline steps (callables on its results dict) and d2seg's augmentation on
    copies of (img, label), each from ``np.random.seed(seed)``, and asserts equal arrays (and, with
    ``same_draws``, that both consumed the same random numbers). Returns d2seg's AugInput."""
    import numpy as np
    from detectron2.data import transforms as T

    np.random.seed(seed)
    ref = {"img": img.copy(), "gt_semantic_seg": label.copy(), "seg_fields": ["gt_semantic_seg"]}
    for step in ref_steps:
        ref = step(ref)
    ref_next = np.random.random_sample()
    np.random.seed(seed)
    aug_input = T.AugInput(img.copy(), sem_seg=label.copy())
    augs(aug_input)
    if same_draws:
        assert np.random.random_sample() == ref_next, f"seed {seed}: other random draws"
    np.testing.assert_array_equal(aug_input.image, ref["img"], err_msg=f"seed {seed}")
    np.testing.assert_array_equal(aug_input.sem_seg, ref["gt_semantic_seg"],
                                  err_msg=f"seed {seed}")
    return aug_input

# the 13 classic methods' mmseg folders (390 configs)
CLASSIC = ("fcn", "pspnet", "psanet", "deeplabv3", "deeplabv3plus", "upernet", "hrnet", "gcnet",
           "nonlocal_net", "ccnet", "danet", "ann", "ocrnet")
