#!/usr/bin/env python
"""Train on a SLURM cluster through submitit: one task per node, Detectron2's ``launch`` in each
task starting its per-GPU workers.

    python tools/launch_slurm.py --nodes 2 --gpus-per-node 8 --partition P --timeout-min 4320 \\
        --job-dir /checkpoint/$USER/d2seg --config-file CONFIG [KEY VALUE ...]
    python tools/launch_slurm.py ... --dry-run   # print the sbatch script and command only
    python tools/launch_slurm.py ... --local     # submitit's local executor: N tasks, N "machines"

Every task is one "machine" of ``tools/train_net.py``: ``--num-machines`` = the number of tasks,
``--machine-rank`` = the task's rank, ``--dist-url tcp://<first host>:<port>`` (the port from the
job id and the attempt, so that all tasks agree without talking). Logs and checkpoints go to
``--job-dir/<job id>``. On the timeout / preemption signal the workers are stopped and the job is
requeued with ``--resume``: it continues from ``last_checkpoint``, and the exact-resume data
stream (docs/reliability.md) makes the result that of an uninterrupted run. ``--gpus-per-node 0``
runs one CPU process per node over gloo. submitit is needed by this tool only
(``pip install submitit``). See docs/distributed.md.
"""
import argparse
import multiprocessing
import os
import shlex
import signal
import sys
import zlib

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))


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
                   help="logs and checkpoints go to JOB_DIR/<job id> (OUTPUT_DIR)")
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
    params.update(nodes=args.nodes, tasks_per_node=1, slurm_signal_delay_s=120)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    for key, value in (("mem_gb", args.mem_gb), ("slurm_partition", args.partition),
                       ("slurm_constraint", args.constraint), ("slurm_comment", args.comment)):
        if value is not None:
            params[key] = value
    return params


def sbatch_script(args) -> str:
    """The sbatch file submitit would write for ``args`` (with ``%j`` for the job id)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = dict(job_name=args.job_name, time=args.timeout_min, nodes=args.nodes,
                  ntasks_per_node=1, cpus_per_task=cpus_per_task(args), signal_delay_s=120)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    for key, value in (("mem", f"{args.mem_gb}GB" if args.mem_gb else None),
                       ("partition", args.partition), ("constraint", args.constraint),
                       ("comment", args.comment)):
        if value is not None:
            params[key] = value
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(os.path.join(args.job_dir, "%j"))])
    return _make_sbatch_string(command=command, folder=os.path.join(args.job_dir, "%j"), **params)


def train_net_command(args, job_id="%j", machine_rank="$SLURM_NODEID", host="<first node>",
                      port="<port>") -> str:
    """The tools/train_net.py command each task runs (for --dry-run and the logs)."""
    cmd = [sys.executable, os.path.join(TOOLS_DIR, "train_net.py"),
           "--config-file", args.config_file, "--num-gpus", str(max(args.gpus_per_node, 1)),
           "--num-machines", str(args.nodes), "--machine-rank", machine_rank,
           "--dist-url", f"tcp://{host}:{port}", "--dist-timeout", str(args.dist_timeout)]
    cmd += ["--resume"] * args.resume + ["--eval-only"] * args.eval_only
    cmd += task_opts(args, job_id)
    return " ".join(shlex.quote(c) if not c.startswith("$") else c for c in cmd)


def task_opts(args, job_id: str):
    opts = list(args.opts) + ["OUTPUT_DIR", os.path.join(args.job_dir, job_id)]
    if args.gpus_per_node == 0:
        opts += ["MODEL.DEVICE", "cpu"]
    return opts


def _stop_workers() -> None:
    """Ends this task's training processes (Detectron2's launch children)."""
    children = multiprocessing.active_children()
    for p in children:
        p.terminate()
    for p in children:
        p.join(timeout=30)


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the task that started it dies (a requeue kills the
    task), so no worker outlives its task holding the port or the GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def _worker_main(args):
    _die_with_parent()
    sys.path.insert(0, TOOLS_DIR)
    import train_net

    return train_net.main(args)


class SlurmTraining:
    """The submitted callable: one task = one machine of Detectron2's ``launch``. submitit calls
    :meth:`checkpoint` on the timeout / preemption signal (task 0) and requeues what it returns."""

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
        self._install_signal_handler(env)
        local = env.cluster == "local"
        host = "127.0.0.1" if local else env.hostnames[0]
        args = argparse.Namespace(**vars(self.args))
        args.num_gpus = max(self.args.gpus_per_node, 1)
        args.num_machines, args.machine_rank = env.num_tasks, env.global_rank
        args.dist_url = f"tcp://{host}:{dist_port(env.job_id, self.attempt)}"
        args.opts = task_opts(self.args, env.job_id)
        command = train_net_command(self.args, env.job_id, str(env.global_rank), host,
                                    str(dist_port(env.job_id, self.attempt)))
        print(f"d2seg launch_slurm: job {env.job_id} attempt {self.attempt}, task "
              f"{env.global_rank} of {env.num_tasks}, as: {command}", flush=True)
        # by reference (the workers are spawned: they import this file from sys.path)
        sys.path.insert(0, TOOLS_DIR)
        from launch_slurm import _worker_main

        launch(_worker_main, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,),
               timeout=datetime.timedelta(seconds=args.dist_timeout))

    def _install_signal_handler(self, env) -> None:
        """Before submitit's handler (task 0: checkpoint + requeue; others: nothing), stop the
        training workers; a task other than 0 then exits (the requeue restarts every task)."""
        import submitit

        sig = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(sig)

        def handler(signum, frame):
            _stop_workers()
            if callable(submitit_handler):
                submitit_handler(signum, frame)
            if env.global_rank != 0:
                sys.exit(0)

        signal.signal(sig, handler)

    def checkpoint(self):
        """The requeued job: the same command with ``--resume`` (continues from
        OUTPUT_DIR/last_checkpoint), a new rendezvous port."""
        import submitit

        args = argparse.Namespace(**vars(self.args))
        args.resume = True
        return submitit.helpers.DelayedSubmission(SlurmTraining(args, self.attempt + 1))


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        print(sbatch_script(args))
        print("# each task runs (SLURM_NODEID = its node's rank):")
        print(train_net_command(args))
        return None
    import submitit

    executor = submitit.AutoExecutor(folder=os.path.join(args.job_dir, "%j"),
                                     cluster="local" if args.local else None,
                                     slurm_max_num_timeout=args.max_requeues)
    executor.update_parameters(**executor_parameters(args))
    job = executor.submit(SlurmTraining(args))
    print(f"Submitted job {job.job_id}: logs and checkpoints in "
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
