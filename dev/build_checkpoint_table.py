"""Writes ``mmseg_checkpoints.json``: the checkpoint MMSegmentation 0.30 released for each config of
the 13 methods and the real-time families d2seg ports, and the ImageNet weights each config starts from.

    python dev/build_checkpoint_table.py        # needs mmseg 0.30 + mmcv 1.x

Sources, all shipped in the mmseg/mmcv packages (nothing is downloaded):
- ``mmseg/.mim/configs/<method>/<method>.yml`` (the metafiles behind mmseg's READMEs):
  ``Weights`` URL, dataset and mIoU of each released model;
- ``mmseg/.mim/configs/<method>/*.py``: every config, including those without a released
  model; its ImageNet init is ``model.backbone.init_cfg.checkpoint`` when the config sets one
  (the LoveDA and RSB configs; their ``model.pretrained`` is the inherited default), else
  ``model.pretrained``;
- ``mmcv/model_zoo/open_mmlab.json``, ``torchvision_0.12.json`` and ``mmcls.json``: what
  ``open-mmlab://``, ``torchvision://`` and ``mmcls://`` names stand for (as mmcv's ``load_checkpoint`` resolves them).
"""
import glob
import json
import os
import re
import sys

METHODS = ("fcn", "pspnet", "psanet", "deeplabv3", "deeplabv3plus", "upernet", "hrnet", "gcnet",
           "nonlocal_net", "ccnet", "danet", "ann", "ocrnet",
           # the real-time families
           "bisenetv1", "bisenetv2", "stdc", "fastscnn", "icnet", "cgnet", "erfnet",
           "mobilenet_v2", "mobilenet_v3",
           # the transformer families
           "segformer", "swin", "convnext", "twins", "poolformer", "vit",
           "beit", "mae", "segmenter", "setr", "dpt", "knet")
TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "d2seg", "model_zoo", "mmseg_checkpoints.json")
# released file names end in -<first 8 hex digits of the file's sha256>.pth
_HASHED = re.compile(r"-[0-9a-f]{8}\.pth$")


def _imagenet_init(cfg):
    backbone = cfg.model.backbone
    # STDC / BiSeNetV1 / ICNet: the ImageNet init is the inner network's (backbone_cfg)
    for init in (backbone.get("init_cfg"), backbone.get("backbone_cfg", {}).get("init_cfg")):
        if (init or {}).get("type") == "Pretrained":
            return init["checkpoint"]
    return cfg.model.get("pretrained")


def build_table():
    import mmcv
    import mmseg
    import yaml
    from mmcv import Config

    root = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")
    zoo = os.path.join(os.path.dirname(mmcv.__file__), "model_zoo")
    schemes = {}
    for scheme, fname in (("open-mmlab://", "open_mmlab.json"),
                          ("torchvision://", "torchvision_0.12.json"),
                          ("mmcls://", "mmcls.json")):  # MobileNetV2's mmcls://mobilenet_v2
        with open(os.path.join(zoo, fname)) as f:
            schemes[scheme] = json.load(f)
    configs, used = {}, set()
    for method in METHODS:
        with open(os.path.join(root, method, f"{method}.yml")) as f:
            released = {os.path.basename(m["Config"])[:-3]: m for m in yaml.safe_load(f)["Models"]}
        for path in sorted(glob.glob(os.path.join(root, method, "*.py"))):
            stem = os.path.basename(path)[:-3]
            pretrained = _imagenet_init(Config.fromfile(path))
            entry = {"weights": None, "pretrained": pretrained}
            model = released.get(stem)
            if model is not None and model.get("Weights"):
                url = model["Weights"]
                if not _HASHED.search(url):
                    raise ValueError(f"{method}/{stem}: {url} does not end in -<8 hex>.pth")
                result = model["Results"]
                result = result[0] if isinstance(result, list) else result
                entry.update(weights=url, dataset=result["Dataset"],
                             mIoU=result["Metrics"].get("mIoU"))
            configs[f"{method}/{stem}"] = entry
            if pretrained and "://" in pretrained and not pretrained.startswith("http"):
                used.add(pretrained)
    imagenet = {}
    for name in sorted(used):
        scheme, key = name.split("://", 1)
        try:
            imagenet[name] = schemes[scheme + "://"][key]
        except KeyError:
            raise ValueError(f"{name}: not in mmcv's {scheme} table") from None
    return {
        "generated_by": "python dev/build_checkpoint_table.py",
        "mmseg_version": mmseg.__version__,
        "imagenet": imagenet,
        "configs": configs,
    }


def main() -> int:
    table = build_table()
    tmp = TABLE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, TABLE)
    n = len(table["configs"])
    with_weights = sum(1 for e in table["configs"].values() if e["weights"])
    print(f"wrote {TABLE}: {n} configs, {with_weights} with a released checkpoint, "
          f"{n - with_weights} without; {len(table['imagenet'])} ImageNet names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
