"""Smoke test of tools/benchmark.py (CI): every task on a tiny model, a few iterations; checks
the reported fields, not speed."""
import importlib.util
import json
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart.yaml")


@pytest.fixture(scope="module")
def bench_tool():
    spec = importlib.util.spec_from_file_location(
        "d2seg_benchmark_tool", os.path.join(REPO, "tools", "benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_common(r, task):
    assert r["task"] == task
    assert r["machine"]["threads"] >= 1 and r["machine"]["torch"]
    assert r["machine"]["cpu"] and r["machine"]["device"] == "cpu"
    assert r["img_per_s"] > 0 and r["max_memory_mb"] > 0
    assert r["memory_kind"] == "peak RSS (process)"


def test_inference_task(bench_tool, capsys):
    r = bench_tool.main(["--config-file", CONFIG, "--num-iter", "2", "--warmup", "1",
                        "--input-size", "48", "64", "--winograd", "F4", "--json",
                        "--no-progress", "MODEL.DEVICE", "cpu"])
    _check_common(r, "inference")
    assert r["ms_per_img"] > 0 and r["input_size"] == [48, 64]
    assert r["output_shape"] == [48, 64]
    assert r["options"]["fuse_bn"] and r["options"]["winograd"] == "F4"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["task"] == "inference"


def test_train_task(bench_tool):
    r = bench_tool.main(["--config-file", CONFIG, "--task", "train", "--num-iter", "1",
                        "--warmup", "1", "--batch-size", "2", "--json", "--no-progress",
                        "MODEL.DEVICE", "cpu", "INPUT.CROP.SIZE", "[64, 64]"])
    _check_common(r, "train")
    assert r["batch_size"] == 2 and r["crop_size"] == [64, 64] and r["s_per_iter"] > 0


def test_train_task_amp_bf16(bench_tool):
    r = bench_tool.main(["--config-file", CONFIG, "--task", "train", "--num-iter", "1",
                        "--warmup", "0", "--amp", "--json", "--no-progress",
                        "MODEL.DEVICE", "cpu", "INPUT.CROP.SIZE", "[64, 64]"])
    assert r["options"]["amp"] == "bfloat16" and r["img_per_s"] > 0


def test_data_task(bench_tool):
    r = bench_tool.main(["--config-file", CONFIG, "--task", "data", "--num-iter", "2",
                        "--warmup", "1", "--json", "--no-progress", "MODEL.DEVICE", "cpu",
                        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"])
    _check_common(r, "data")
    assert r["dataset"] == ["d2seg_shapes_train"] and r["batch_size"] == 2


def test_all_writes_a_markdown_table(bench_tool, tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(f'_BASE_: "{CONFIG}"\n')
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "skipped.yaml").write_text(f'_BASE_: "{CONFIG}"\n')
    results = bench_tool.main(["--all", str(tmp_path), "--num-iter", "1", "--warmup", "0",
                              "--input-size", "32", "32", "--no-progress",
                              "MODEL.DEVICE", "cpu"])
    assert len(results) == 1 and "error" not in results[0], results
    out = capsys.readouterr().out
    assert "| config | task | ms/img | img/s | memory MB | options |" in out
    assert "| tiny.yaml | inference |" in out and "Machine:" in out


def test_benchmark_ops_prints_both_tables(monkeypatch, capsys):
    import benchmark_ops

    monkeypatch.setattr(benchmark_ops, "POINTWISE", [(8, 4, 6, 10)])
    monkeypatch.setattr(benchmark_ops, "DILATED",
                        dict(n=1, ci=4, co=3, h=8, w=12, dilations=(3, 9)))
    threads = str(torch.get_num_threads())  # keep the session's thread count
    benchmark_ops.main(["--op", "pointwise", "--iters", "1", "--threads", threads])
    benchmark_ops.main(["--op", "dilated", "--iters", "1", "--threads", threads])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| 8 -> 4, 6 x 10 |") and len(rows[1].split("|")) == 5
    assert [r.split("|")[1].strip() for r in rows[3:]] == ["3", "9"]


def test_interleaved_blocks_alternate_and_time_only_after_settling():
    from d2seg.utils.timing import interleaved_blocks

    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = interleaved_blocks(fns, rounds=3, block=2, settle=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}
    assert all(t >= 0 for v in times.values() for t in v)
    # blocks of settle + block calls, in A-B-C then C-B-A order
    assert "".join(calls) == "aaabbbccc" + "cccbbbaaa" + "aaabbbccc"
    with pytest.raises(ValueError, match="rounds 0"):
        interleaved_blocks(fns, rounds=0)
