#!/usr/bin/env python
"""Converts an MMSegmentation (0.x or 1.x) checkpoint to a Detectron2 checkpoint for d2seg.

    python tools/convert_mmseg_checkpoint.py SRC.pth DST.pth
    python tools/convert_mmseg_checkpoint.py SRC.pth DST.pth --config CONFIG.yaml [KEY VALUE ...]
    python tools/convert_mmseg_checkpoint.py \
        mmseg://pspnet/pspnet_r50-d8_512x1024_40k_cityscapes DST.pth

SRC may be a name or URL (``mmseg://<method>/<config stem>``, ``https://...``): downloaded to the
cache and verified first (docs/checkpoints.md).

DST is ``{"model": state_dict with d2seg's names, "meta": {...}}``; ``MODEL.WEIGHTS DST`` loads it.
With ``--config`` the d2seg model of that config is built and the converted keys are checked
against it: missing / unexpected keys are listed, and a shape mismatch or a checkpoint of another
method exits with status 1 naming the keys (DST is not written). Loading SRC directly through
``MODEL.WEIGHTS`` gives the same model; converting once saves the renaming at every start.
"""
import argparse
import logging
import sys

from detectron2.utils.file_io import PathManager

from d2seg.checkpoint import CheckpointMismatchError, convert_mmseg_checkpoint
from d2seg.checkpoint.compat import group_keys


def build_model(config_file, opts):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model as d2_build_model

    import d2seg

    cfg = get_cfg()
    d2seg.add_d2seg_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return d2_build_model(cfg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("src", help="MMSegmentation checkpoint (.pth, URL or mmseg:// name)")
    parser.add_argument("dst", help="where to write the d2seg checkpoint (.pth)")
    parser.add_argument("--config", help="d2seg config: check the keys against its model")
    parser.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING)

    model = build_model(args.config, args.opts) if args.config else None
    try:
        src = PathManager.get_local_path(args.src) if "://" in args.src else args.src
        ckpt, report = convert_mmseg_checkpoint(src, args.dst, model=model)
    except CheckpointMismatchError as e:
        print(f"ERROR: {e}\n{args.dst} not written.", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, KeyError) as e:  # OSError: DownloadError, ChecksumError
        print(f"ERROR: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    meta = ckpt["meta"]
    print(f"{args.src}: {len(ckpt['model'])} tensors"
          + (f", {len(meta['classes'])} classes" if "classes" in meta else "")
          + (f", mmseg {meta['mmseg_version']}" if "mmseg_version" in meta else ""))
    if report is not None:
        print(f"checked against {args.config}: {len(report.loaded)} tensors match")
        for title, keys in (("missing", report.missing + report.aux_missing),
                            ("unexpected", report.unexpected + report.aux_unexpected)):
            print(f"{title} keys ({len(keys)})" + "".join(f"\n  {g}" for g in group_keys(keys)))
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
