#!/usr/bin/env python
"""Train / evaluate a d2seg model with Detectron2's launcher.

    python tools/train_net.py --config-file configs/quickstart.yaml
    python tools/train_net.py --config-file CFG --num-gpus 8 [KEY VALUE ...]
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file configs/<method>/<stem>.yaml \
        --eval-only MODEL.WEIGHTS mmseg://<method>/<stem>  # MMSegmentation's trained model
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS W TEST.AUG.ENABLED True

MODEL.WEIGHTS: a path, an http(s):// URL or a name (mmseg://, open-mmlab://; docs/checkpoints.md).
SIGUSR2 or SIGTERM (SLURM's time-limit / preemption signals) stop training after the current
iteration with a checkpoint of it: ``--resume`` continues there (d2seg/engine/preemption.py).
"""
import datetime
import logging
import os

from detectron2.engine import default_argument_parser, hooks, launch
from detectron2.utils import comm

import d2seg  # noqa: F401  (registers d2seg's models and datasets)
from d2seg.checkpoint import SegCheckpointer
from d2seg.engine import Trainer, setup_cfg
from d2seg.engine.preemption import PreemptionCheckpoint, Preempted


def main(args):
    # first: from here on a stop signal saves a checkpoint at the step reached (none yet: step 0)
    stop = None if args.eval_only else PreemptionCheckpoint()
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else ""  # checks mmseg's meta
        SegCheckpointer(model, save_dir=cfg.OUTPUT_DIR, dataset=dataset).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        if cfg.TEST.AUG.ENABLED:  # mmseg's --aug-test: the augmented test only
            return Trainer.test_with_TTA(cfg, model)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    # after training, also the augmented test (Detectron2's train_net); with TEST.AUG.ALWAYS
    # every evaluation already is (Trainer.test)
    if cfg.TEST.AUG.ENABLED and not cfg.TEST.AUG.ALWAYS:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    trainer.register_hooks([stop])  # last: after the step's periodic checkpoint and evaluation
    try:
        return trainer.train()
    except Preempted as e:  # the checkpoint is saved on disk: not a failure
        logging.getLogger("d2seg").warning("%s", e)
        return e
    except RuntimeError as e:
        lost = ("connection closed", "timed out", "timeout", "connection reset", "broken pipe")
        if comm.get_world_size() > 1 and any(k in str(e).lower() for k in lost):
            raise RuntimeError(
                f"rank {comm.get_rank()} of {comm.get_world_size()}: lost the other training "
                "processes (one died or is unreachable; waits at most --dist-timeout / "
                f"D2SEG_DIST_TIMEOUT seconds): {e}"
            ) from e
        raise


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument(
        "--dist-timeout", type=float, default=float(os.environ.get("D2SEG_DIST_TIMEOUT", 1800)),
        help="seconds a process waits for the others (start-up, collectives) before failing; "
             "env D2SEG_DIST_TIMEOUT",
    )
    args = parser.parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=datetime.timedelta(seconds=args.dist_timeout),
    )
