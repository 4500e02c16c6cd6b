#!/usr/bin/env python
"""Train on a SLURM cluster through submitit: one task per node, Detectron2's ``launch`` in each
task starting its per-GPU workers.

    python tools/launch_slurm.py --nodes 2 --gpus-per-node 8 --partition P --timeout-min 4320 \\
        --job-dir /checkpoint/$USER/d2seg --config-file CONFIG [KEY VALUE ...]
    python tools/launch_slurm.py ... --dry-run   # print the sbatch script and command only
    python tools/launch_slurm.py ... --local     # submitit's local executor: N tasks, N "machines"

Every task is one "machine" of ``tools/train_net.py``: ``--num-machines`` = the number of tasks,
``--machine-rank`` = the task's rank, ``--dist-url tcp://<first host>:<port>`` (the port from the
job id and the attempt, so that all tasks agree without talking). ``--job-dir`` is the run's
OUTPUT_DIR (checkpoints, log.txt, metrics) whatever the job id, and submitit's files and logs go
to ``--job-dir/<job id>``: resubmitting the same command with ``--resume`` continues the run.

On the time-limit / preemption signal (submitit's USR2, or SIGTERM) each task passes the signal
to its training processes, which finish the current iteration and save ``model_<iter>.pth``
(d2seg/engine/preemption.py); then task 0 has submitit requeue the job with ``--resume``, which
continues from that iteration, and the exact-resume data stream (docs/reliability.md) makes the
result that of an uninterrupted run. ``--gpus-per-node 0`` runs one CPU process per node over
gloo. submitit is needed by this tool only (``pip install submitit``). See docs/distributed.md.
"""
import argparse
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import zlib

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
# SLURM signals SIGNAL_DELAY_S before the time limit; the training processes then have
# SAVE_TIMEOUT_S to save and exit, after which they are killed and the job is requeued anyway
# (from the last periodic checkpoint)
SIGNAL_DELAY_S = 120
SAVE_TIMEOUT_S = 90
# set in this process when training ran in it (world size 1) and stopped on a signal
_STOPPED = []


def parse_args(argv=None):
    sys.path.insert(0, TOOLS_DIR)
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()  # train_net.py's options (its launch options are set here)
    parser.add_argument("--dist-timeout", type=float,
                        default=float(os.environ.get("D2SEG_DIST_TIMEOUT", 1800)),
                        help="as train_net.py: seconds a process waits for the others")
    g = parser.add_argument_group("SLURM")
    g.add_argument("--nodes", type=int, default=1, help="machines (one task each)")
    g.add_argument("--gpus-per-node", type=int, default=8,
                   help="worker processes per node, one per GPU; 0 = one CPU process (gloo)")
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--timeout-min", type=int, default=60 * 72, help="job time limit, minutes")
    g.add_argument("--job-dir", required=True,
                   help="the run's OUTPUT_DIR (checkpoints, log.txt); submitit's files and logs "
                        "in JOB_DIR/<job id>. --resume continues the run found there")
    g.add_argument("--mem-gb", type=int, default=None, help="memory per node")
    g.add_argument("--cpus-per-task", type=int, default=None,
                   help="CPUs per node (default: 10 per GPU, 2 without GPUs)")
    g.add_argument("--constraint", default=None, help="SLURM --constraint (e.g. volta32gb)")
    g.add_argument("--comment", default=None, help="SLURM --comment")
    g.add_argument("--job-name", default="d2seg")
    g.add_argument("--max-requeues", type=int, default=3,
                   help="timeouts after which the job is not requeued any more")
    g.add_argument("--local", action="store_true",
                   help="run through submitit's local executor (NODES tasks on this machine)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the sbatch script and the command line, submit nothing")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 0:
        parser.error(f"--nodes {args.nodes} must be >= 1 and --gpus-per-node {args.gpus_per_node} "
                     ">= 0")
    if args.num_machines != 1 or args.machine_rank != 0 or args.num_gpus != 1:
        parser.error("--num-machines/--machine-rank/--num-gpus are set by the launcher: use "
                     "--nodes and --gpus-per-node")
    last = os.path.join(args.job_dir, "last_checkpoint")
    if not (args.resume or args.eval_only) and os.path.exists(last):
        parser.error(f"--job-dir {args.job_dir} holds a previous run ({last}): add --resume to "
                     "continue it, or give another --job-dir (training from scratch there would "
                     "overwrite its checkpoints)")
    return args


def dist_port(job_id: str, attempt: int) -> int:
    """A port every task of the job computes alike; another per attempt (a requeued job may
    land on the same host before the old socket is released)."""
    return 20000 + (zlib.crc32(job_id.encode()) % 20000) * 2 + attempt % 2


def cpus_per_task(args) -> int:
    return args.cpus_per_task or (10 * args.gpus_per_node if args.gpus_per_node else 2)


def executor_parameters(args) -> dict:
    """submitit's (AutoExecutor) parameters: one task per node. Locally, one task per "node"."""
    params = dict(name=args.job_name, timeout_min=args.timeout_min,
                  cpus_per_task=cpus_per_task(args))
    if args.local:
        params.update(tasks_per_node=args.nodes, gpus_per_node=args.gpus_per_node)
        return params
    params.update(nodes=args.nodes, tasks_per_node=1, slurm_signal_delay_s=SIGNAL_DELAY_S)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    for key, value in (("mem_gb", args.mem_gb), ("slurm_partition", args.partition),
                       ("slurm_constraint", args.constraint), ("slurm_comment", args.comment)):
        if value is not None:
            params[key] = value
    return params


def slurm_folder(args) -> str:
    """submitit's folder: the sbatch script, pickles and ``<job id>_<task>_log.out/.err``."""
    return os.path.join(args.job_dir, "%j")


def dry_run_text(args) -> str:
    """What would be submitted: submitit's parameters (it writes the sbatch script from them:
    ``nodes`` -> ``#SBATCH --nodes``, ``slurm_signal_delay_s`` -> ``--signal=USR2@...``, ...)."""
    lines = ["# submitit.AutoExecutor(folder=%s).update_parameters(" % slurm_folder(args)]
    lines += [f"#     {k}={v!r}," for k, v in sorted(executor_parameters(args).items())] + ["# )"]
    lines += [f"# OUTPUT_DIR: {args.job_dir}",
              "# each task runs (SLURM_NODEID = its node's rank):", train_net_command(args)]
    return "\n".join(lines)


def train_net_command(args, machine_rank="$SLURM_NODEID", host="<first node>",
                      port="<port>") -> str:
    """The tools/train_net.py command each task runs (for --dry-run and the logs)."""
    cmd = [sys.executable, os.path.join(TOOLS_DIR, "train_net.py"),
           "--config-file", args.config_file, "--num-gpus", str(max(args.gpus_per_node, 1)),
           "--num-machines", str(args.nodes), "--machine-rank", machine_rank,
           "--dist-url", f"tcp://{host}:{port}", "--dist-timeout", str(args.dist_timeout)]
    cmd += ["--resume"] * args.resume + ["--eval-only"] * args.eval_only
    cmd += task_opts(args)
    return " ".join(shlex.quote(c) if not c.startswith("$") else c for c in cmd)


def task_opts(args):
    opts = list(args.opts) + ["OUTPUT_DIR", args.job_dir]
    if args.gpus_per_node == 0:
        opts += ["MODEL.DEVICE", "cpu"]
    return opts


def _kill_workers() -> None:
    """Ends this task's training processes (Detectron2's launch children) that did not save and
    exit in time (SIGKILL: SIGTERM asks them to save)."""
    for p in multiprocessing.active_children():
        p.kill()


def _die_with_parent() -> None:
    """Linux: this process is killed when the task that started it dies, so no worker outlives
    its task holding the port or the GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def _worker_main(args):
    _die_with_parent()
    sys.path.insert(0, TOOLS_DIR)
    import train_net

    from d2seg.engine.preemption import Preempted

    result = train_net.main(args)
    if isinstance(result, Preempted):  # seen by the task when training ran in its process
        _STOPPED.append(result.signum)
    return result


class SlurmTraining:
    """The submitted callable: one task = one machine of Detectron2's ``launch``. On the stop
    signal the training processes save and exit first; then task 0 runs submitit's own handler
    for it, which calls :meth:`checkpoint` and requeues what it returns."""

    def __init__(self, args, attempt: int = 0):
        self.args = args
        self.attempt = attempt

    def __call__(self):
        import datetime

        import submitit

        if self.args.gpus_per_node == 0:  # before CUDA can initialise
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes over gloo, as without CUDA
        from detectron2.engine import launch

        env = submitit.JobEnvironment()
        requeue_handler = self._install_signal_handlers()
        local = env.cluster == "local"
        host = "127.0.0.1" if local else env.hostnames[0]
        args = argparse.Namespace(**vars(self.args))
        # a job SLURM itself requeued (preemption, node failure) reruns the submitted command:
        # it continues too (parse_args refused a fresh run in a folder holding a checkpoint)
        args.resume = self.args.resume or os.environ.get("SLURM_RESTART_COUNT", "0") != "0"
        port = dist_port(env.job_id, self.attempt)
        command = train_net_command(args, str(env.global_rank), host, str(port))
        args.num_gpus = max(self.args.gpus_per_node, 1)
        args.num_machines, args.machine_rank = env.num_tasks, env.global_rank
        args.dist_url = f"tcp://{host}:{port}"
        args.opts = task_opts(self.args)
        print(f"d2seg launch_slurm: job {env.job_id} attempt {self.attempt}, task "
              f"{env.global_rank} of {env.num_tasks}, as: {command}", flush=True)
        # by reference (the workers are spawned: they import this file from sys.path)
        sys.path.insert(0, TOOLS_DIR)
        import launch_slurm

        try:
            launch(launch_slurm._worker_main, args.num_gpus, num_machines=args.num_machines,
                   machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,),
                   timeout=datetime.timedelta(seconds=args.dist_timeout))
        except Exception:
            if self._signum is None:
                raise  # a failure, not a stop (else: workers killed after SAVE_TIMEOUT_S)
        signum = self._signum or (launch_slurm._STOPPED or [None])[0]
        if signum is None:
            return None  # training finished
        print(f"d2seg launch_slurm: task {env.global_rank} stopped by "
              f"{signal.Signals(signum).name} after saving a checkpoint", flush=True)
        if env.global_rank != 0:
            return None  # task 0 requeues the whole job
        if signum == _requeue_signal() and callable(requeue_handler):
            requeue_handler(signum, None)  # submitit: checkpoint() -> requeue, exit
        # SIGTERM: SLURM requeues a preempted job itself, or it was cancelled
        raise RuntimeError(f"stopped by {signal.Signals(signum).name}; checkpoint in "
                           f"{self.args.job_dir}: resubmit with --resume to continue")

    def _install_signal_handlers(self):
        """Replaces submitit's handler of its requeue signal (which requeues at once, killing
        the workers before they save) and SIGTERM's with one that passes the signal on to
        the training processes; returns submitit's handler, run once they have saved."""
        self._signum = None
        sig = _requeue_signal()
        requeue_handler = signal.getsignal(sig)

        def handler(signum, frame):
            first = self._signum is None
            self._signum = self._signum or signum
            workers = multiprocessing.active_children()
            for p in workers:
                os.kill(p.pid, signum)
            if first and workers:
                timer = threading.Timer(SAVE_TIMEOUT_S, _kill_workers)
                timer.daemon = True
                timer.start()

        for s in {sig, signal.SIGTERM}:
            signal.signal(s, handler)
        return requeue_handler

    def checkpoint(self):
        """The requeued job: the same command with ``--resume`` (continues from
        OUTPUT_DIR/last_checkpoint), a new rendezvous port."""
        import submitit

        args = argparse.Namespace(**vars(self.args))
        args.resume = True
        return submitit.helpers.DelayedSubmission(SlurmTraining(args, self.attempt + 1))


def _requeue_signal() -> int:
    """The signal submitit requeues on (USR2, or $SUBMITIT_PREEMPT_SIGNAL)."""
    import submitit

    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        print(dry_run_text(args))
        return None
    import submitit

    executor = submitit.AutoExecutor(folder=slurm_folder(args),
                                     cluster="local" if args.local else None,
                                     slurm_max_num_timeout=args.max_requeues)
    executor.update_parameters(**executor_parameters(args))
    job = executor.submit(SlurmTraining(args))
    print(f"Submitted job {job.job_id}: checkpoints in {args.job_dir}, its logs in "
          f"{os.path.join(args.job_dir, str(job.job_id))}", flush=True)
    if args.local:  # the local executor's job lives as long as this process: wait for it
        job.results()
        print(f"Job {job.job_id} finished", flush=True)
    try:  # submitit makes the folder before it knows the job id: drop the empty "%j"
        os.rmdir(os.path.join(args.job_dir, "%j"))
    except OSError:
        pass
    return job


if __name__ == "__main__":
    main()
