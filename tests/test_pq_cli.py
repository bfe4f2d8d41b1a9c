"""``adaseg pq`` and ``pq_compute_files``: the file-based drop-in for pq_compute.

The command runs as a real subprocess; its table and its ``--json`` dict must
be what ``panopticapi.evaluation.pq_compute`` prints and returns on the same
files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_pq import run_pq_compute
from trainer_image.cli import pq as pq_cli
from trainer_image.data.coco_panoptic import PanopticSplit, write_split
from trainer_image.eval.perturb import perturb_prediction
from trainer_image.eval.pq import PQInputError, format_table
from trainer_image.eval.pq_files import pq_compute_files

TOLERANCE = 1e-9


def write_predictions(split: PanopticSplit, root: Path, seed: int) -> tuple[str, str]:
    """Perturbed predictions of ``split`` in the same layout; returns (json, png folder)."""
    rng = np.random.default_rng(seed)
    category_ids = [c.id for c in split.categories]

    def items():
        for record in split.records:
            ids = split.load_panoptic(record, check=False)
            cats = {s.id: s.category_id for s in record.segments}
            pred, pred_cats = perturb_prediction(ids, cats, category_ids, rng)
            labels = {k: (c, False) for k, c in pred_cats.items()}
            yield record.image_id, np.zeros((*ids.shape, 3), np.uint8), pred, labels

    json_path = write_split(root, "pred", split.categories, items(), image_format="png")
    return str(json_path), str(root / "annotations" / "panoptic_pred")


def assert_same(result: dict, expected: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert result[group]["n"] == expected[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert result[group][key] == pytest.approx(expected[group][key], abs=TOLERANCE)
    assert {str(k) for k in result["per_class"]} == {str(k) for k in expected["per_class"]}
    by_str = {str(k): v for k, v in result["per_class"].items()}
    for cat_id, scores in expected["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert by_str[str(cat_id)][key] == pytest.approx(scores[key], abs=TOLERANCE)


def adaseg_pq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controller_service.cli", "pq", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def synth_files(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tiny synthetic val split and perturbed predictions of it, as files."""
    split = PanopticSplit.from_dir(synth_dir, "val")
    pred_json, pred_dir = write_predictions(split, tmp_path_factory.mktemp("pred"), seed=7)
    return {
        "gt_json": str(synth_dir / "annotations" / "panoptic_val.json"),
        "gt_dir": str(synth_dir / "annotations" / "panoptic_val"),
        "pred_json": pred_json,
        "pred_dir": pred_dir,
    }


def cli_args(files: dict[str, str]) -> list[str]:
    return [
        "--gt-json",
        files["gt_json"],
        "--gt-folder",
        files["gt_dir"],
        "--pred-json",
        files["pred_json"],
        "--pred-folder",
        files["pred_dir"],
    ]


def test_command_prints_the_table_pq_compute_prints(synth_files: dict[str, str]) -> None:
    expected, printed = run_pq_compute(**synth_files)
    done = adaseg_pq(*cli_args(synth_files), "--workers", "2")
    assert done.returncode == 0, done.stderr
    table = done.stdout.rstrip("\n")
    assert table == format_table(expected)
    assert table in printed
    assert len(table.splitlines()) == 5


def test_command_json_is_the_dict_pq_compute_returns(synth_files: dict[str, str]) -> None:
    expected, _ = run_pq_compute(**synth_files)
    done = adaseg_pq(*cli_args(synth_files), "--json", "--workers", "1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == set(expected)
    assert_same(result, expected)
    assert 0.0 < result["All"]["pq"] < 1.0


def test_files_parity_on_the_real_sample(tmp_path: Path, coco_sample: PanopticSplit) -> None:
    sample_json = str(coco_sample.json_path)
    # pq_compute's default folders: the JSON path without ".json"
    identical = pq_compute_files(sample_json, None, sample_json, None, workers=2)
    assert identical["All"]["pq"] == 1.0
    pred_json, pred_dir = write_predictions(coco_sample, tmp_path, seed=3)
    gt_dir = str(coco_sample.png_dir)
    expected, _ = run_pq_compute(sample_json, gt_dir, pred_json, pred_dir)
    for workers in (1, 2):
        assert_same(pq_compute_files(sample_json, gt_dir, pred_json, pred_dir, workers), expected)


def run_main(files: dict[str, str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    pq_cli.add_arguments(parser)
    code = pq_cli.main(parser.parse_args([*cli_args(files), "--workers", "1"]))
    return code, capsys.readouterr().err


def test_bad_inputs_are_named(
    tmp_path: Path, synth_files: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    files = dict(synth_files)
    pred = json.loads(Path(files["pred_json"]).read_text())
    first_id = pred["annotations"][0]["image_id"]
    pred["annotations"] = pred["annotations"][1:]
    files["pred_json"] = str(tmp_path / "fewer.json")
    Path(files["pred_json"]).write_text(json.dumps(pred))
    code, err = run_main(files, capsys)
    assert code == 2 and f"no prediction for the image with id: {first_id}" in err

    corrupt = tmp_path / "corrupt"
    shutil.copytree(synth_files["pred_dir"], corrupt)
    victim = sorted(corrupt.iterdir())[0]
    victim.write_bytes(b"not a png")
    code, err = run_main({**synth_files, "pred_dir": str(corrupt)}, capsys)
    assert code == 2 and str(victim) in err and "not a readable PNG" in err

    code, err = run_main({**synth_files, "gt_dir": str(tmp_path / "nowhere")}, capsys)
    assert code == 2 and "nowhere" in err and "does not exist" in err

    with pytest.raises(PQInputError, match="workers"):
        pq_compute_files(files["gt_json"], None, files["pred_json"], None, workers=0)


def test_file_names_outside_the_png_folders_are_refused(
    tmp_path: Path, synth_files: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    """An annotation whose ``file_name`` is absolute (or climbs out with ``..``) names a PNG
    outside its folder: refused with the image named, although the file exists."""
    for key, folder in (("gt_json", "gt_dir"), ("pred_json", "pred_dir")):
        data = json.loads(Path(synth_files[key]).read_text())
        annotation = data["annotations"][0]
        for name in (
            str(Path(synth_files[folder]) / annotation["file_name"]),
            f"../{Path(synth_files[folder]).name}/{annotation['file_name']}",
        ):
            annotation["file_name"] = name
            edited = tmp_path / f"edited-{key}.json"
            edited.write_text(json.dumps(data))
            code, err = run_main({**synth_files, key: str(edited)}, capsys)
            assert code == 2 and repr(name) in err and "inside its PNG folder" in err, err
            assert repr(annotation["image_id"]) in err


def test_command_exit_code_and_message_through_a_subprocess(
    tmp_path: Path, synth_files: dict[str, str]
) -> None:
    missing = str(tmp_path / "missing.json")
    done = adaseg_pq(*cli_args({**synth_files, "pred_json": missing}))
    assert done.returncode == 2
    assert "missing.json does not exist" in done.stderr and done.stdout == ""
