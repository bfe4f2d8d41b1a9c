"""`adaseg data`: synth, split and check through the real dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller_service.cli import main
from tests.fixtures.data import real_sample_layout
from trainer_image.data.coco_panoptic import PanopticSplit
from trainer_image.data.split import proxy_split


def test_synth_split_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    argv = ["data", "synth", "--out", str(out), "--images", "10", "--size", "24x40"]
    assert main([*argv, "--seed", "4", "--val-images", "3"]) == 0
    assert "wrote 10 train + 3 val images of 24x40" in capsys.readouterr().out
    train = PanopticSplit.from_dir(out, "train")
    assert len(train) == 10 and len(PanopticSplit.from_dir(out, "val")) == 3
    assert (train.records[0].height, train.records[0].width) == (24, 40)

    ids_file = tmp_path / "split.json"
    argv = ["data", "split", "--data", str(out), "--split", "train", "--proxy-val", "0.2"]
    assert main([*argv, "--seed", "1", "--out", str(ids_file)]) == 0
    assert "proxy-train: 8 images, proxy-val: 2 images" in capsys.readouterr().out
    written = json.loads(ids_file.read_text())
    proxy_train, proxy_val = proxy_split(train, 0.2, seed=1)
    assert written["proxy_val_ids"] == [r.image_id for r in proxy_val.records]
    assert written["proxy_train_ids"] == [r.image_id for r in proxy_train.records]

    assert main(["data", "check", "--data", str(out), "--split", "val"]) == 0
    assert "ok: 3 images" in capsys.readouterr().out


def test_check_the_real_sample_by_explicit_paths(
    coco_sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "data",
        "check",
        "--json",
        str(coco_sample_dir / "panoptic_examples.json"),
        "--png-dir",
        str(coco_sample_dir / "panoptic_examples"),
        "--image-dir",
        str(coco_sample_dir / "input_images"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ok: 2 images, 50 segments (3 crowd), 133 categories (80 things)" in out


def test_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path), "--images", "2", "--size", "16"]) == 0
    capsys.readouterr()
    png = tmp_path / "annotations" / "panoptic_train" / "000000000001.png"
    png.write_bytes(b"broken")
    assert main(["data", "check", "--data", str(tmp_path)]) == 1
    assert f"adaseg data check: {png}: not a readable PNG" in capsys.readouterr().err
    assert main(["data", "split", "--data", str(tmp_path), "--proxy-val", "5"]) == 1
    assert "proxy_val as a count must lie in [1, 1]" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path), "--images", "2", "--size", "9"]) == 1
    assert "at least 16x16" in capsys.readouterr().err


def test_split_uses_the_shared_proxy_val_parser(synth_dir: Path, capsys) -> None:
    """``data split`` and the worker read --proxy-val alike (data.split.parse_proxy_val)."""
    assert main(["data", "split", "--data", str(synth_dir), "--proxy-val", "1"]) == 0
    assert "proxy-val: 1 images" in capsys.readouterr().out
    assert main(["data", "split", "--data", str(synth_dir), "--proxy-val", "1.0"]) == 1
    assert "--proxy-val '1.0' is neither a fraction in (0, 1)" in capsys.readouterr().err


def test_layouts_are_found_and_an_unknown_one_lists_the_paths(
    coco_sample_dir: Path, tmp_path: Path, capsys
) -> None:
    root = real_sample_layout(coco_sample_dir, tmp_path / "ade", "ade20k")
    assert main(["data", "check", "--data", str(root), "--split", "val"]) == 0
    assert "ok: 2 images, 50 segments" in capsys.readouterr().out
    assert main(["data", "check", "--data", str(tmp_path), "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert f"no panoptic split 'val' under {tmp_path}" in err
    assert str(tmp_path / "ade20k_panoptic_val.json") in err
