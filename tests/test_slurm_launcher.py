"""tools/launch_slurm.py: the sbatch script of --dry-run, and the whole path through submitit's
local executor, where 2 tasks act as 2 machines over gloo (one CPU process each):

- 2 machines x batch 2 end with the weights of 1 process x batch 4 (SyncBN vs BN);
- a job whose tasks get the timeout signal midway is requeued, resumes from last_checkpoint and
  ends with the weights of the uninterrupted job.
"""
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_train_e2e import REPO, TINY

TOOL = os.path.join(REPO, "tools", "launch_slurm.py")
CONFIG = os.path.join(REPO, "configs", "quickstart.yaml")
# 6 iterations, a checkpoint every 2 (model_0000001, _0000003, _0000005), no evaluation
RUN = [*TINY, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
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


def test_dry_run_prints_the_sbatch_script_and_the_command(tool, capsys):
    assert tool.main(["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu-long",
                      "--timeout-min", "4320", "--job-dir", "/ckpt/d2seg", "--mem-gb", "480",
                      "--constraint", "a100", "--comment", "cvpr", "--dry-run",
                      "--config-file", CONFIG, "SOLVER.IMS_PER_BATCH", "16"]) is None
    out = capsys.readouterr().out
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu-long", "#SBATCH --time=4320", "#SBATCH --mem=480GB",
                 "#SBATCH --constraint=a100", "#SBATCH --comment=cvpr",
                 "#SBATCH --cpus-per-task=80", "#SBATCH --signal=USR2@120",
                 "#SBATCH --output=/ckpt/d2seg/%j/%j_0_log.out"]:
        assert line in out.splitlines(), line
    command = out.splitlines()[-1]
    assert "train_net.py" in command and "--num-gpus 8 --num-machines 2" in command
    assert "--machine-rank $SLURM_NODEID" in command
    assert command.endswith("SOLVER.IMS_PER_BATCH 16 OUTPUT_DIR /ckpt/d2seg/%j")


def test_cpu_dry_run_and_bad_arguments(tool, capsys):
    tool.main(["--nodes", "3", "--gpus-per-node", "0", "--job-dir", "/j", "--dry-run",
               "--config-file", CONFIG])
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=3" in out and "--gpus-per-node" not in out.split("# each task")[0]
    assert "--num-gpus 1 --num-machines 3" in out and out.rstrip().endswith("MODEL.DEVICE cpu")
    with pytest.raises(SystemExit):
        tool.main(["--nodes", "0", "--job-dir", "/j", "--dry-run"])
    with pytest.raises(SystemExit):  # the launcher sets the machine layout itself
        tool.main(["--num-machines", "2", "--job-dir", "/j", "--dry-run"])
    assert "--num-machines" in capsys.readouterr().err


def test_dist_port_is_shared_and_changes_per_attempt(tool):
    assert tool.dist_port("123456", 0) == tool.dist_port("123456", 0)
    assert tool.dist_port("123456", 0) != tool.dist_port("123456", 1)
    assert all(1024 < tool.dist_port(str(j), a) < 65536 for j in range(0, 10**6, 9973)
               for a in range(3))


# ---- the local executor: 2 tasks = 2 machines ---------------------------------------------------

def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", D2SEG_DIST_TIMEOUT="60",
                DETECTRON2_DATASETS=os.environ.get("DETECTRON2_DATASETS",
                                                   os.path.join(REPO, "datasets")))


def _start(job_dir, nodes, opts):
    return subprocess.Popen(
        [sys.executable, TOOL, "--local", "--nodes", str(nodes), "--gpus-per-node", "0",
         "--timeout-min", "15", "--job-dir", str(job_dir), "--config-file", CONFIG, *opts],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _output_dir(job_dir):
    runs = [d for d in os.listdir(job_dir) if d.isdigit()]
    assert len(runs) == 1, os.listdir(job_dir)
    return os.path.join(job_dir, runs[0])


def _finish(proc, job_dir, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    logs = ""
    if os.path.isdir(job_dir):
        for d in os.listdir(job_dir):
            for f in sorted(os.listdir(os.path.join(job_dir, d))) if d.isdigit() else ():
                if f.endswith(("_log.out", "_log.err")):
                    logs += open(os.path.join(job_dir, d, f)).read()
    assert proc.returncode == 0, out[-3000:] + logs[-6000:]
    return _output_dir(job_dir), logs


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
def test_local_two_machines_equal_one_process_and_resume_after_the_timeout_signal(tmp_path):
    two, one, requeued = tmp_path / "two", tmp_path / "one", tmp_path / "requeued"
    # the three jobs run at the same time (mostly start-up: imports, process spawning)
    procs = [_start(two, 2, RUN + SYNC_BN), _start(requeued, 2, RUN + SYNC_BN),
             _start(one, 1, RUN + BN)]
    deadline = time.time() + 1200  # generous: a loaded CI machine starts processes slowly
    while not (os.path.isdir(requeued) and any(d.isdigit() for d in os.listdir(requeued))
               and os.path.exists(os.path.join(_output_dir(requeued), "model_0000003.pth"))):
        assert time.time() < deadline and procs[1].poll() is None, procs[1].poll()
        time.sleep(0.2)
    job_id = os.path.basename(_output_dir(requeued))
    tasks = _task_pids(int(job_id))
    assert len(tasks) == 2
    for pid in tasks:  # what SLURM does before the time limit (--signal=USR2@120)
        os.kill(pid, signal.SIGUSR2)
    out_requeued, logs = _finish(procs[1], requeued)
    assert "Requeued job" in logs and "attempt 1, task 0 of 2" in logs, logs[-6000:]
    out_two, _ = _finish(procs[0], two)
    out_one, _ = _finish(procs[2], one)

    w_two = _weights(out_two)
    assert_same_weights(w_two, _weights(out_one), atol=1e-5)
    assert_same_weights(w_two, _weights(out_requeued), atol=0.0)
    with open(os.path.join(out_requeued, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
