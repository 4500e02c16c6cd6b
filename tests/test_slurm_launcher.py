"""tools/launch_slurm.py: the sbatch script of --dry-run, and the whole path through submitit's
local executor, where 2 tasks act as 2 machines over gloo (one CPU process each):

- 2 machines x batch 2 end with the weights of 1 process x batch 4 (SyncBN vs BN);
- a job whose tasks get the timeout signal midway saves the iteration it reached, is requeued
  with --resume in the same OUTPUT_DIR, continues from that iteration and ends with the weights
  of the uninterrupted job; tools/train_net.py alone does the same on SIGTERM.
"""
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_train_e2e import REPO, TINY

TOOL = os.path.join(REPO, "tools", "launch_slurm.py")
CONFIG = os.path.join(REPO, "configs", "quickstart.yaml")
# MAX_ITER iterations, no periodic checkpoint (a checkpoint before model_final is the signal's),
# no evaluation
MAX_ITER = 12
RUN = [*TINY, "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "1000",
       "TEST.EVAL_PERIOD", "0",
       "DATASETS.TEST", "()", "SEED", "5", "SOLVER.BASE_LR", "0.01",
       # dropout masks are drawn per process: off, so that both layouts compute the same thing
       "MODEL.SEM_SEG_HEAD.DROPOUT", "0.0", "MODEL.AUX_HEAD.DROPOUT", "0.0"]
SYNC_BN = ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN",
           "MODEL.AUX_HEAD.NORM", "SyncBN"]
BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN"]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("d2seg_launch_slurm", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_prints_the_submitit_parameters_and_the_command(tool, capsys):
    assert tool.main(["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu-long",
                      "--timeout-min", "4320", "--job-dir", "/ckpt/d2seg", "--mem-gb", "480",
                      "--constraint", "a100", "--comment", "cvpr", "--dry-run",
                      "--config-file", CONFIG, "SOLVER.IMS_PER_BATCH", "16"]) is None
    out = capsys.readouterr().out
    assert "submitit.AutoExecutor(folder=/ckpt/d2seg/%j)" in out
    for line in ["nodes=2", "tasks_per_node=1", "gpus_per_node=8", "slurm_partition='gpu-long'",
                 "timeout_min=4320", "mem_gb=480", "slurm_constraint='a100'",
                 "slurm_comment='cvpr'", "cpus_per_task=80", "slurm_signal_delay_s=120"]:
        assert f"#     {line}," in out.splitlines(), line
    command = out.splitlines()[-1]
    assert "train_net.py" in command and "--num-gpus 8 --num-machines 2" in command
    assert "--machine-rank $SLURM_NODEID" in command and "--resume" not in command
    # OUTPUT_DIR is the job dir itself, not a per-job-id folder: a resubmission finds the run
    assert command.endswith("SOLVER.IMS_PER_BATCH 16 OUTPUT_DIR /ckpt/d2seg")


def test_the_dry_run_parameters_are_submitits(tool, tmp_path, monkeypatch):
    """The parameters of --dry-run are the ones submitted, and submitit's SLURM executor takes
    them (it rejects unknown names)."""
    import submitit

    srun = tmp_path / "srun"  # submitit's SLURM executor looks for it
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    args = tool.parse_args(["--nodes", "2", "--gpus-per-node", "8", "--partition", "p",
                            "--mem-gb", "64", "--job-dir", str(tmp_path), "--config-file", CONFIG])
    executor = submitit.AutoExecutor(folder=str(tmp_path / "%j"), cluster="slurm")
    executor.update_parameters(**tool.executor_parameters(args))


def test_cpu_dry_run_and_bad_arguments(tool, capsys):
    tool.main(["--nodes", "3", "--gpus-per-node", "0", "--job-dir", "/j", "--dry-run",
               "--config-file", CONFIG])
    out = capsys.readouterr().out
    assert "#     nodes=3," in out and "gpus_per_node" not in out
    assert "--num-gpus 1 --num-machines 3" in out and out.rstrip().endswith("MODEL.DEVICE cpu")
    with pytest.raises(SystemExit):
        tool.main(["--nodes", "0", "--job-dir", "/j", "--dry-run"])
    with pytest.raises(SystemExit):  # the launcher sets the machine layout itself
        tool.main(["--num-machines", "2", "--job-dir", "/j", "--dry-run"])
    assert "--num-machines" in capsys.readouterr().err


def test_a_job_dir_with_a_run_needs_resume(tool, tmp_path, capsys):
    """Resubmitting into a job dir that holds a run continues it with --resume (same OUTPUT_DIR,
    another job id); without --resume the launcher refuses instead of overwriting it."""
    job_dir = str(tmp_path)
    with open(os.path.join(job_dir, "last_checkpoint"), "w") as f:
        f.write("model_0000041.pth")
    argv = ["--nodes", "2", "--gpus-per-node", "8", "--job-dir", job_dir, "--dry-run",
            "--config-file", CONFIG]
    with pytest.raises(SystemExit):
        tool.main(argv)
    err = capsys.readouterr().err
    assert os.path.join(job_dir, "last_checkpoint") in err and "--resume" in err
    tool.main(argv + ["--resume"])
    command = capsys.readouterr().out.splitlines()[-1]
    assert " --resume " in command and command.endswith(f"OUTPUT_DIR {job_dir}")
    tool.main(argv + ["--eval-only", "MODEL.WEIGHTS", "w.pth"])  # evaluating it writes nothing


def test_dist_port_is_shared_and_changes_per_attempt(tool):
    assert tool.dist_port("123456", 0) == tool.dist_port("123456", 0)
    assert tool.dist_port("123456", 0) != tool.dist_port("123456", 1)
    assert all(1024 < tool.dist_port(str(j), a) < 65536 for j in range(0, 10**6, 9973)
               for a in range(3))


# ---- a stop signal saves the step reached; --resume continues there ------------------------

def _wait_for(path, text, proc, timeout=1200):
    deadline = time.time() + timeout  # generous: a loaded CI machine starts processes slowly
    while not (os.path.exists(path) and text in open(path).read()):
        assert time.time() < deadline and proc.poll() is None, proc.poll()
        time.sleep(0.1)


def _stopped_at(log):
    m = re.search(r"training stopped by (SIG\w+) after iteration (\d+): saved (model_\d+\.pth)",
                  log)
    assert m, log[-3000:]
    return m.group(1), int(m.group(2)), m.group(3)


def test_train_net_saves_the_step_reached_on_sigterm_and_resume_continues_there(tmp_path):
    out = str(tmp_path / "run")
    run = [*TINY, "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "1000",
           "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG]
    proc = subprocess.Popen(cmd + run, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(os.path.join(out, "log.txt"), "Starting training from iteration 0", proc)
    proc.send_signal(signal.SIGTERM)  # as SLURM before preempting the job
    assert proc.wait(timeout=300) == 0
    with open(os.path.join(out, "log.txt")) as f:
        name, it, ckpt = _stopped_at(f.read())
    assert name == "SIGTERM" and 0 <= it < 399 and ckpt == f"model_{it:07d}.pth"
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == ckpt
    # the only checkpoint (none is periodic here), with the iteration resume_or_load reads
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == [ckpt]
    assert torch.load(os.path.join(out, ckpt), weights_only=False)["iteration"] == it
    # the same command with --resume, in the same OUTPUT_DIR, continues at the next iteration
    run[run.index("SOLVER.MAX_ITER") + 1] = str(it + 3)
    proc = subprocess.run(cmd + ["--resume"] + run, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "log.txt")) as f:
        assert f"Starting training from iteration {it + 1}" in f.read()
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"


# ---- the local executor: 2 tasks = 2 machines ---------------------------------------------------

def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", D2SEG_DIST_TIMEOUT="60",
                DETECTRON2_DATASETS=os.environ.get("DETECTRON2_DATASETS",
                                                   os.path.join(REPO, "datasets")))


def _start(job_dir, nodes, opts, resume=False):
    return subprocess.Popen(
        [sys.executable, TOOL, "--local", "--nodes", str(nodes), "--gpus-per-node", "0",
         "--timeout-min", "15", "--job-dir", str(job_dir), "--config-file", CONFIG,
         *["--resume"] * resume, *opts],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, job_dir, timeout=600):
    """Waits for the job; returns the logs of its tasks (submitit's, one folder per job id)."""
    out, _ = proc.communicate(timeout=timeout)
    logs = ""
    for d in sorted(os.listdir(job_dir)):
        for f in sorted(os.listdir(os.path.join(job_dir, d))) if d.isdigit() else ():
            if f.endswith(("_log.out", "_log.err")):
                logs += open(os.path.join(job_dir, d, f)).read()
    assert proc.returncode == 0, out[-3000:] + logs[-6000:]
    return logs


def _weights(output_dir):
    return torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=False)["model"]


def assert_same_weights(a, b, atol, rtol=0.0):
    """State dicts ``a`` and ``b`` equal within tolerance, BN's ``running_var`` and
    ``num_batches_tracked`` excepted (NaiveSyncBN tracks the biased variance and no count)."""
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        if not k.endswith(("running_var", "num_batches_tracked")):
            torch.testing.assert_close(v, b[k], atol=atol, rtol=rtol, msg=k)


def _task_pids(controller_pid):
    """The task processes of a local job: the children of its controller (pid = job id)."""
    with open(f"/proc/{controller_pid}/task/{controller_pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the task pids")
def test_local_two_machines_equal_one_process_and_save_requeue_resume_on_the_timeout_signal(
        tmp_path):
    two, one, requeued = tmp_path / "two", tmp_path / "one", tmp_path / "requeued"
    # the three jobs run at the same time (mostly start-up: imports, process spawning)
    procs = [_start(two, 2, RUN + SYNC_BN), _start(requeued, 2, RUN + SYNC_BN),
             _start(one, 1, RUN + BN)]
    _wait_for(os.path.join(requeued, "log.txt"), "Starting training from iteration 0", procs[1])
    job_id = [d for d in os.listdir(requeued) if d.isdigit()][0]
    tasks = _task_pids(int(job_id))
    assert len(tasks) == 2
    for pid in tasks:  # what SLURM does before the time limit (--signal=USR2@120)
        os.kill(pid, signal.SIGUSR2)
    logs = _finish(procs[1], requeued)
    # the workers finished their step and saved it (no periodic checkpoint here), then task 0
    # had submitit requeue the job with --resume in the same OUTPUT_DIR, continuing there
    name, it, ckpt = _stopped_at(logs)
    assert name == "SIGUSR2" and it < MAX_ITER - 1
    assert torch.load(os.path.join(requeued, ckpt), weights_only=False)["iteration"] == it
    assert "Requeued job" in logs and "attempt 1, task 0 of 2" in logs, logs[-6000:]
    attempt1 = logs[logs.index("attempt 1, task 0 of 2"):].splitlines()[0]
    assert " --resume " in attempt1
    assert attempt1.endswith(f"OUTPUT_DIR {requeued} MODEL.DEVICE cpu")
    with open(os.path.join(requeued, "log.txt")) as f:
        assert f"Starting training from iteration {it + 1}" in f.read()
    _finish(procs[0], two)
    _finish(procs[2], one)

    w_two = _weights(two)
    assert_same_weights(w_two, _weights(one), atol=1e-5)
    assert_same_weights(w_two, _weights(requeued), atol=0.0)
    with open(os.path.join(requeued, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
