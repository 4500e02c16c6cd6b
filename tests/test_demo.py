"""tools/demo.py: folders and globs, unreadable inputs (skipped, named, exit status), the
dataset's side-by-side overlays, video in -> mp4 out, an unreadable video."""
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from test_inference_tools import CONFIG, TINY, load_tool, tiny_folder_dataset


@pytest.fixture(scope="module")
def demo():
    return load_tool("demo")


def test_folder_glob_and_unreadable_input(demo, tmp_path, capsys):
    data = tiny_folder_dataset(tmp_path, "test_demo2_ds")
    bad = tmp_path / "img" / "broken.png"
    bad.write_text("not a picture")
    img = tmp_path / "img"
    written, skipped = demo.run(["--config-file", CONFIG, "--input", str(img / "*.png"),
                                 str(img / "0.jpg"), "--output", str(tmp_path / "o"),
                                 "--opacity", "0.3", *TINY, *data])
    assert [os.path.basename(w) for w in written] == ["0_overlay.png"]
    assert len(skipped) == 1 and str(bad) in skipped[0]
    assert f"skipped {bad}" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        demo.run(["--config-file", CONFIG, "--input", str(tmp_path / "nothing_here*"), "--output",
                  str(tmp_path / "o"), *TINY, *data])


def test_dataset_overlays_are_side_by_side_and_wide(demo, tmp_path):
    data = tiny_folder_dataset(tmp_path, "test_demo3_ds")
    written, skipped = demo.run(["--config-file", CONFIG, "--dataset", "test_demo3_ds", "--max",
                                 "2", "--output", str(tmp_path / "o"), *TINY, *data])
    assert len(written) == 2 and not skipped
    out = np.asarray(Image.open(written[0]))
    scale = -(-demo.MIN_PANEL_WIDTH // 90)  # three 30 px panels, upscaled to >= 512 px
    assert out.shape == (20 * scale, 90 * scale, 3) and out.shape[1] >= 512
    rgb = np.asarray(Image.open(tmp_path / "img" / "0.jpg").convert("RGB"))
    assert np.array_equal(out[::scale, : 30 * scale : scale], rgb)  # left: the image itself
    assert not np.array_equal(out[::scale, 30 * scale : 60 * scale : scale], rgb)  # ground truth


def test_video_in_mp4_out_and_unreadable_video(demo, tmp_path):
    data = tiny_folder_dataset(tmp_path, "test_demo4_ds")
    src = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(src, cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for i in range(4):
        writer.write(np.full((24, 32, 3), 60 * i, np.uint8))
    writer.release()
    written, skipped = demo.run(["--config-file", CONFIG, "--video-input", src, "--max", "3",
                                 "--output", str(tmp_path / "v"), *TINY, *data])
    assert written == [str(tmp_path / "v" / "clip.mp4")] and not skipped
    cap = cv2.VideoCapture(written[0])
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 3
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    written, skipped = demo.run(["--config-file", CONFIG, "--video-input", str(bad), "--output",
                                 str(tmp_path / "v2"), *TINY, *data])
    assert written == [] and str(bad) in skipped[0]
    assert not os.path.exists(tmp_path / "v2" / "bad.mp4")
