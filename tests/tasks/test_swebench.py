"""SWE-bench files: byte-for-byte round trips of canonical files, every accepted shape, and errors that
name the file and line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from codefoundry.tasks.swebench import (
    INSTANCE_FIELDS,
    Instance,
    Prediction,
    load_instances,
    read_predictions,
    write_instances,
    write_predictions,
)

DATA = Path(__file__).parent / "data"
INSTANCES = DATA / "swebench_instances.jsonl"
PREDICTIONS = DATA / "swebench_predictions.jsonl"
BY_ID = DATA / "swebench_predictions_by_id.json"


def test_instances_round_trip_byte_for_byte(tmp_path):
    out = tmp_path / "out.jsonl"
    write_instances(out, load_instances(INSTANCES))
    assert out.read_bytes() == INSTANCES.read_bytes()


def test_predictions_round_trip_byte_for_byte(tmp_path):
    out = tmp_path / "out.jsonl"
    write_predictions(out, read_predictions(PREDICTIONS))
    assert out.read_bytes() == PREDICTIONS.read_bytes()


def test_instance_fields():
    rangekit, tinyhttp, csvtool = load_instances(INSTANCES)
    assert rangekit.instance_id == "example__rangekit-101" and rangekit.repo == "example/rangekit"
    assert rangekit.FAIL_TO_PASS == (
        "tests/test_ranges.py::test_merge_adjacent",
        "tests/test_ranges.py::test_merge_empty",
    )
    assert rangekit.PASS_TO_PASS == ("tests/test_ranges.py::test_merge_disjoint",)
    assert "José" in rangekit.problem_statement and rangekit.tests_as_json_strings
    assert rangekit.extras == {}
    assert list(tinyhttp.extras) == ["difficulty", "image_assets"]
    assert tinyhttp.PASS_TO_PASS == ()
    # a dump with list-valued test fields, its own key order, no environment_setup_commit
    assert not csvtool.tests_as_json_strings
    record = csvtool.to_dict()
    assert list(record)[:2] == ["instance_id", "repo"] and "environment_setup_commit" not in record
    assert record["FAIL_TO_PASS"] == ["tests/test_reader.py::test_empty"]
    assert list(record)[-1] == "split"


def test_test_lists_keep_their_original_string_until_changed(tmp_path):
    record = {"instance_id": "a__b-1", "repo": "a/b", "base_commit": "c0", "FAIL_TO_PASS": '[ "t1","t2" ]',
              "PASS_TO_PASS": "[]"}  # fmt: skip
    (instance,) = load_instances(_write_lines(tmp_path / "i.jsonl", [record]))
    assert instance.FAIL_TO_PASS == ("t1", "t2")
    assert instance.to_dict()["FAIL_TO_PASS"] == '[ "t1","t2" ]'
    changed = dataclasses.replace(instance, FAIL_TO_PASS=("t1",))
    assert changed.to_dict()["FAIL_TO_PASS"] == '["t1"]'


def test_new_instances_are_written_in_the_released_column_order():
    instance = Instance("o__r-3", "o/r", "abc", FAIL_TO_PASS=("t::a",), extras={"difficulty": "easy"})
    record = instance.to_dict()
    assert list(record) == [*INSTANCE_FIELDS, "difficulty"]
    assert record["FAIL_TO_PASS"] == '["t::a"]' and record["PASS_TO_PASS"] == "[]"


def test_json_list_of_instances(tmp_path):
    records = [json.loads(line) for line in INSTANCES.read_text().splitlines()]
    pretty = tmp_path / "dataset.json"
    pretty.write_text(json.dumps(records, indent=2))
    assert load_instances(pretty) == load_instances(INSTANCES)
    sniffed = tmp_path / "dataset.txt"  # no telling suffix: a leading "[" means a JSON list
    sniffed.write_text(json.dumps(records))
    assert load_instances(sniffed) == load_instances(INSTANCES)
    canonical = tmp_path / "canonical.json"
    canonical.write_text(json.dumps(records) + "\n")
    out = tmp_path / "out.json"
    write_instances(out, load_instances(canonical))
    assert out.read_bytes() == canonical.read_bytes()


def test_predictions_keyed_by_instance_id():
    preds = read_predictions(BY_ID)
    assert preds == read_predictions(PREDICTIONS)  # extra fields dropped, missing ids taken from the key


def test_predictions_as_json_list(tmp_path):
    path = tmp_path / "preds.json"
    write_predictions(path, read_predictions(PREDICTIONS))
    assert path.read_text().startswith('[{"instance_id": "example__rangekit-101", "model_name_or_path"')
    assert read_predictions(path) == read_predictions(PREDICTIONS)


def test_written_predictions_read_the_way_the_harness_reads_them(tmp_path):
    preds = [
        Prediction("x__y-1", "model/ü", "diff --git a/f.py b/f.py\n+print('héllo ✓')\n"),
        Prediction("x__y-2", "model/ü", ""),
        Prediction("x__y-3", "model/ü", None),
    ]
    path = tmp_path / "preds.jsonl"
    write_predictions(path, preds)
    raw = path.read_bytes()
    assert raw.isascii() and b"\r" not in raw and not raw.endswith(b"\n\n")
    with open(path, encoding="ascii") as f:  # the harness opens without an encoding; ASCII reads anywhere
        records = [json.loads(line) for line in f]
    assert [list(r) for r in records] == [["instance_id", "model_name_or_path", "model_patch"]] * 3
    assert [r["model_patch"] for r in records] == [preds[0].model_patch, "", None]


def test_write_refuses_what_the_harness_cannot_read(tmp_path):
    pred = Prediction("x__y-1", "m", "")
    with pytest.raises(ValueError, match=r"preds\.txt: the SWE-bench harness reads only"):
        write_predictions(tmp_path / "preds.txt", [pred])
    with pytest.raises(ValueError, match="'x__y-1' predicted more than once"):
        write_predictions(tmp_path / "preds.jsonl", [pred, pred])


def _write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("instance_id"), r"bad\.jsonl:2: instance_id missing"),
        (lambda r: r.update(base_commit=7), r"bad\.jsonl:2: base_commit missing or not a non-empty string"),
        (lambda r: r.update(FAIL_TO_PASS="tests/a.py::t"), r"bad\.jsonl:2: FAIL_TO_PASS is a string but not JSON"),
        (lambda r: r.update(PASS_TO_PASS=[1, 2]), r"bad\.jsonl:2: PASS_TO_PASS must be a list of test names"),
        (lambda r: r.update(patch=["x"]), r"bad\.jsonl:2: patch must be a string"),
        (lambda r: r.update(instance_id="example__rangekit-101"), r"bad\.jsonl:2: instance 'example__rangekit-101' repeats line 1"),
    ],
)  # fmt: skip
def test_instance_errors_name_file_and_line(tmp_path, mutate, message):
    records = [json.loads(line) for line in INSTANCES.read_text().splitlines()]
    mutate(records[1])
    with pytest.raises(ValueError, match=message):
        load_instances(_write_lines(tmp_path / "bad.jsonl", records))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("model_name_or_path"), r"bad\.jsonl:3: model_name_or_path missing"),
        (lambda r: r.pop("model_patch"), r"bad\.jsonl:3: model_patch missing \(use null for no patch\)"),
        (lambda r: r.update(model_patch={"diff": ""}), r"bad\.jsonl:3: model_patch must be a string or null, got dict"),
        (lambda r: r.update(instance_id="example__rangekit-101"),
         r"bad\.jsonl:3: instance 'example__rangekit-101' predicted again \(first on line 1\)"),
    ],
)  # fmt: skip
def test_prediction_errors_name_file_and_line(tmp_path, mutate, message):
    records = [json.loads(line) for line in PREDICTIONS.read_text().splitlines()]
    mutate(records[2])
    with pytest.raises(ValueError, match=message):
        read_predictions(_write_lines(tmp_path / "bad.jsonl", records))


def test_errors_in_json_documents_name_the_line(tmp_path):
    by_id = json.loads(BY_ID.read_text())
    by_id["example__csvtool-55"]["model_patch"] = 3
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(by_id, indent=2))
    line = next(
        i for i, text in enumerate(path.read_text().splitlines(), 1) if '"example__csvtool-55"' in text
    )
    with pytest.raises(ValueError, match=rf"bad\.json:{line}: model_patch must be a string or null"):
        read_predictions(path)
    by_id["example__csvtool-55"] = {
        "instance_id": "other__id-1",
        "model_name_or_path": "m",
        "model_patch": "",
    }
    path.write_text(json.dumps(by_id, indent=2))
    with pytest.raises(ValueError, match=r"keyed 'example__csvtool-55' but its instance_id is 'other__id-1'"):
        read_predictions(path)
    path.write_text(
        '[\n  {"instance_id": "a", "model_name_or_path": "m", "model_patch": ""},\n  {"instance_id": }\n]'
    )
    with pytest.raises(ValueError, match=r"bad\.json:3: invalid JSON"):
        read_predictions(path)
    path.write_text('[{"instance_id": "a", "model_name_or_path": "m", "model_patch": ""}]\n]')
    with pytest.raises(ValueError, match=r"bad\.json:2: unexpected data after the JSON document"):
        read_predictions(path)
    path.write_text('"just a string"')
    with pytest.raises(ValueError, match=r"bad\.json:1: expected '\[' or '\{'"):
        read_predictions(path)
    path.write_text("[]")
    assert read_predictions(path) == []


def test_invalid_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(PREDICTIONS.read_text() + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:5: invalid JSON"):
        read_predictions(path)
