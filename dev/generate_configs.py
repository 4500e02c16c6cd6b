#!/usr/bin/env python
"""Generates d2seg's model-zoo configs from MMSegmentation 0.30's own configs (a dev tool).

    python dev/generate_configs.py           # (re)writes configs/<method>/*.yaml and README.md
    python dev/generate_configs.py --check   # exits 1 if a generated file would change

Needs MMSegmentation 0.30 and mmcv 1.x installed (mmseg ships its configs in mmseg/.mim/configs);
d2seg itself never imports them. For every mmseg config of the 13 classic methods and the
real-time families (``METHODS`` in dev/mmseg_translate/registry.py; all but the few in
``BLOCKED``, which name what d2seg lacks) it:

1. loads the fully merged mmseg config (``mmcv.Config.fromfile``) and translates **every** key
   into d2seg's config (starting from the base model yaml of that architecture; the backbone by
   its family's module in dev/mmseg_translate/, see registry.py); a key it does not understand,
   or a value d2seg cannot express, stops the run with the key's path;
2. finds the yaml parent the way mmseg inherits: a leaf whose ``_base_`` is a list inherits
   ``configs/_base_/models/<model>.yaml``; one whose ``_base_`` is ``./<stem>.py`` (R-101,
   HRNet-W18-Small / W48) inherits that leaf's yaml (a family may name its own base instead:
   MobileNetV2's mmseg leaves inherit ResNet-101 leaves, d2seg's ``<head>_m-v2-d8.yaml``);
3. loads the parent into a d2seg cfg (get_cfg + add_d2seg_config + merge_from_file) and writes
   only the keys whose translated value differs from it, then reloads the written file and checks
   that it equals the translation, key for key. ``MODEL.WEIGHTS`` is the ImageNet checkpoint
   mmseg's config initialises its backbone from (``open-mmlab://resnet50_v1c``, ...).

It also writes configs/<method>/README.md: mmseg's reported results, read from the metafile
shipped with mmseg (``<method>/<method>.yml``), a d2seg column ("—" until d2seg has trained the
config: ``--d2seg-results FILE`` takes a JSON ``{"<method>/<stem>": mIoU}``) and links.

Layout: this file is the command line; dev/mmseg_translate/ holds the reading (read.py,
datasets.py), the translation (translation.py + one module per backbone family) and the writing
(write.py).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mmseg_translate import read  # noqa: E402
from mmseg_translate.common import REPO, TranslationError  # noqa: E402,F401
from mmseg_translate.read import load_mmseg, mmseg_config_root  # noqa: E402,F401
from mmseg_translate.registry import BLOCKED, METHODS, REALTIME  # noqa: E402,F401
from mmseg_translate.translation import Translation  # noqa: E402,F401
from mmseg_translate.write import Generator, folder_of, readme  # noqa: E402


def select_stems(root, folders=None):
    """Every mmseg config of the methods (or of ``folders``), less BLOCKED."""
    stems = []
    for folder in folders or METHODS:
        for f in sorted(os.listdir(os.path.join(root, folder))):
            if f.endswith(".py") and f"{folder}/{f[:-3]}" not in BLOCKED:
                stems.append(f"{folder}/{f[:-3]}")
    return stems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if a file would change")
    ap.add_argument("--d2seg-results", help="JSON {'<folder>/<stem>': mIoU} of d2seg runs")
    ap.add_argument("--only", nargs="*", help="stems (folder/stem) to generate")
    ap.add_argument("--folders", nargs="*", choices=list(METHODS),
                    help="generate (or check) these mmseg folders only, with their READMEs")
    args = ap.parse_args(argv)
    root = mmseg_config_root()
    stems = args.only or select_stems(root, args.folders)
    gen = Generator()
    try:
        for stem in stems:
            gen.generate(stem)
    except TranslationError as e:
        raise SystemExit(f"error: {e}")
    finally:
        gen.close()
    results = json.load(open(args.d2seg_results)) if args.d2seg_results else {}
    files = dict(gen.texts)
    if not args.only:
        for folder in args.folders or METHODS:
            ts = [t for s, t in gen.done.items() if folder_of(s) == folder]
            files[f"{folder}/README.md"] = readme(folder, ts, root, results)
    changed = []
    for rel, text in files.items():
        path = os.path.join(REPO, "configs", rel)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            changed.append(rel)
            if not args.check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    n_yaml = sum(rel.endswith(".yaml") for rel in files)
    print(f"{n_yaml} yamls, {len(files) - n_yaml} READMEs; "
          f"{len(changed)} {'would change' if args.check else 'written'}")
    if args.check and changed:
        print("\n".join(changed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

