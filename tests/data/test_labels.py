"""Labels of both tasks: finding strings, and label CSVs (class column, NIH `Finding Labels`,
one 0/1 column per finding) read from real files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medops.config.enums import LabelsFrom, Task
from medops.config.loader import load_config
from medops.config.schema import LabelsConfig
from medops.data.label_csv import read_label_csv
from medops.data.labels import NO_FINDING, format_findings, label_task, parse_findings
from medops.data.sources import FolderSource
from medops.errors import ConfigError, LabelError

# The header of NIH ChestX-ray14's Data_Entry_2017.csv, brackets, inner commas and trailing
# empty column included, so the reader meets the columns it really has.
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
NIH_ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,",
    "00000001_002.png,Effusion|Cardiomegaly,2,1,58,M,PA,2500,2048,0.168,0.168,",
    "00000003_000.png, Hernia |Infiltration ,0,3,81,F,PA,2582,2991,0.143,0.143,",
    "00027426_000.png,No Finding,0,27426,49,F,PA,2021,2021,0.194,0.194,",
    "00000004_000.png,,0,4,82,M,AP,2500,2048,0.168,0.168,",
]
NIH: dict[str, Any] = {"from": "csv", "csv": "nih.csv", "id_column": "Image Index",
       "label_column": "Finding Labels", "patient_column": "Patient ID"}


def _csv(tmp_path: Path, text: str, name: str = "nih.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _read(path: Path, labels: dict[str, Any], task: Task = Task.MULTILABEL) -> dict[str, Any]:
    return read_label_csv(path, LabelsConfig(**labels), task)


def test_findings_have_one_canonical_text() -> None:
    assert parse_findings("Effusion|Cardiomegaly") == ("Cardiomegaly", "Effusion")
    assert parse_findings(" Effusion | Cardiomegaly |") == ("Cardiomegaly", "Effusion")
    assert parse_findings(NO_FINDING) == parse_findings("") == parse_findings(None) == ()
    assert format_findings(["Effusion", "Cardiomegaly", "Effusion"]) == "Cardiomegaly|Effusion"
    assert format_findings([]) == NO_FINDING
    for text in ("A|B", NO_FINDING, "Mass"):
        assert format_findings(parse_findings(text)) == text
    with pytest.raises(LabelError, match="together with findings"):
        parse_findings("No Finding|Effusion")
    with pytest.raises(LabelError, match="cannot be a finding name"):
        format_findings(["A|B"])


def test_targets_and_decisions_per_task() -> None:
    ml = label_task(Task.MULTILABEL)
    assert ml.classes(["B|A", NO_FINDING, "C"]) == ["A", "B", "C"]
    y = ml.targets(["A|C", NO_FINDING], ["A", "B", "C"])
    assert y.dtype == np.float32 and y.tolist() == [[1, 0, 1], [0, 0, 0]]
    assert ml.decide(np.array([[0.9, 0.2, 0.6]]), ["A", "B", "C"], [0.5, 0.5, 0.7]) == [["A"]]
    mc = label_task(Task.MULTICLASS)
    assert mc.targets(["b", "a"], ["a", "b"]).tolist() == [1, 0]


def test_texts_invert_targets() -> None:
    ml, mc = label_task(Task.MULTILABEL), label_task(Task.MULTICLASS)
    labels = ["A|C", NO_FINDING, "B"]
    assert ml.texts(ml.targets(labels, ["A", "B", "C"]), ["A", "B", "C"]) == labels
    assert mc.texts(np.array([1, 0]), ["a", "b"]) == ["b", "a"]


def test_feedback_labels_are_checked_and_made_canonical() -> None:
    ml, mc = label_task(Task.MULTILABEL), label_task(Task.MULTICLASS)
    findings = ["Cardiomegaly", "Effusion"]
    assert ml.canonical(" Effusion|Cardiomegaly ", findings) == "Cardiomegaly|Effusion"
    assert ml.canonical(["Effusion", "Cardiomegaly"], findings) == "Cardiomegaly|Effusion"
    assert ml.canonical(NO_FINDING, findings) == ml.canonical([], findings) == NO_FINDING
    with pytest.raises(LabelError, match=r"'Mass' is not a finding of the model; its findings "
                                         r"are \['Cardiomegaly', 'Effusion'\]"):
        ml.canonical("Effusion|Mass", findings)
    with pytest.raises(LabelError, match="together with findings"):
        ml.canonical(["No Finding", "Effusion"], findings)
    with pytest.raises(LabelError, match="an empty label"):
        ml.canonical(" ", findings)
    assert mc.canonical("b", ["a", "b"]) == "b"
    with pytest.raises(LabelError, match=r"'c' is not one of the model's classes"):
        mc.canonical("c", ["a", "b"])
    with pytest.raises(LabelError, match="a multiclass model takes one class name"):
        mc.canonical(["a"], ["a", "b"])


def test_nih_csv_reads_findings_no_finding_and_patients(tmp_path: Path) -> None:
    path = _csv(tmp_path, "\n".join([NIH_HEADER, *NIH_ROWS]) + "\n")
    rows = _read(path, NIH)
    assert {k: v[0] for k, v in rows.items()} == {
        "00000001_000.png": "Cardiomegaly",
        "00000001_001.png": "Cardiomegaly|Emphysema",
        "00000001_002.png": "Cardiomegaly|Effusion",  # NIH's order, sorted
        "00000003_000.png": "Hernia|Infiltration",  # whitespace around findings dropped
        "00027426_000.png": NO_FINDING,
        "00000004_000.png": None,  # a blank cell is no label, not "No Finding"
    }
    patients = {k: v[1] for k, v in rows.items()}
    assert patients["00000001_000.png"] == patients["00000001_002.png"]
    assert patients["00000001_000.png"] != patients["00027426_000.png"]
    assert all(p and p.startswith("pt-") and "27426" not in p for p in patients.values())


def test_nih_csv_errors_name_the_column_line_and_fix(tmp_path: Path) -> None:
    path = _csv(tmp_path, "\n".join([NIH_HEADER, *NIH_ROWS]) + "\n")
    with pytest.raises(LabelError, match=r"no column 'Finding Label' \(data.labels.label_column"
                                         r"\).*did you mean 'Finding Labels'\?"):
        _read(path, {**NIH, "label_column": "Finding Label"})
    with pytest.raises(LabelError, match=r"no column 'PatientID'.*did you mean 'Patient ID'"):
        _read(path, {**NIH, "patient_column": "PatientID"})
    bad = _csv(tmp_path, f"{NIH_HEADER}\n{NIH_ROWS[0]}\n"
                         "00000005_000.png,No Finding|Mass,0,5,69,F,PA,1,1,1,1,\n")
    with pytest.raises(LabelError, match=r"line 3 \(Image Index '00000005_000.png'\).*"
                                         r"'No Finding' together with findings"):
        _read(bad, NIH)


def test_the_same_csv_as_multiclass_keeps_labels_verbatim(tmp_path: Path) -> None:
    path = _csv(tmp_path, "\n".join([NIH_HEADER, *NIH_ROWS]) + "\n")
    rows = _read(path, NIH, Task.MULTICLASS)
    assert rows["00000001_002.png"][0] == "Effusion|Cardiomegaly"


def test_finding_columns_listed_and_auto(tmp_path: Path) -> None:
    path = _csv(tmp_path, "path,patient,age,Effusion,Cardiomegaly,Mass,view\n"
                          "a.png,P1,61,1,0,,PA\n"
                          "b.png,P1,62,1.0,1.0,0.0,PA\n"
                          "c.png,P2,40,0,0,0,AP\n"
                          "d.png,P3,33,,,,AP\n", "cols.csv")
    base: dict[str, Any] = {"from": "csv", "csv": "cols.csv", "patient_column": "patient"}
    listed = _read(path, {**base, "finding_columns": ["Effusion", "Cardiomegaly"]})
    assert {k: v[0] for k, v in listed.items()} == {
        "a.png": "Effusion", "b.png": "Cardiomegaly|Effusion", "c.png": NO_FINDING,
        "d.png": None}  # every finding cell blank: unlabelled
    auto = _read(path, {**base, "finding_columns": "auto"})  # age and view are not 0/1 columns
    assert auto["b.png"][0] == "Cardiomegaly|Effusion" and auto["a.png"][0] == "Effusion"
    assert auto["d.png"][0] is None


def test_finding_column_errors(tmp_path: Path) -> None:
    path = _csv(tmp_path, "path,Effusion,Edema\na.png,1,0\nb.png,-1,1\n", "cols.csv")
    base: dict[str, Any] = {"from": "csv", "csv": "cols.csv"}
    with pytest.raises(LabelError, match=r"line 3 \(path 'b.png'\): finding column 'Effusion' "
                                         r"holds '-1'.*1 \(present\), 0 \(absent\)"):
        _read(path, {**base, "finding_columns": ["Effusion", "Edema"]})
    with pytest.raises(LabelError, match=r"no column 'Efusion' \(data.labels.finding_columns\)"
                                         r".*did you mean 'Effusion'"):
        _read(path, {**base, "finding_columns": ["Efusion"]})
    odd = _csv(tmp_path, "path,age,sex\na.png,61,F\n", "odd.csv")
    with pytest.raises(LabelError, match=r"'auto' but no column holds only 0, 1 or blank: "
                                         r"'age' \(holds '61'\), 'sex' \(holds 'F'\)"):
        _read(odd, {**base, "csv": "odd.csv", "finding_columns": "auto"})


@pytest.mark.parametrize(("yaml", "message"), [
    ("data: {labels: {from: csv, csv: x.csv, finding_columns: [A]}}",
     "task is 'multiclass'.*fix: set task: multilabel"),
    ("task: multilabel\ndata: {labels: {finding_columns: [A]}}",
     "labels.from is 'folder-names'.*fix: labels.from: csv"),
    ("task: multilabel\ndata: {labels: {from: csv, csv: x.csv, label_column: F, "
     "finding_columns: auto}}", "label_column .* and labels.finding_columns are both set"),
    ("task: multilabel\ndata: {labels: {from: csv, csv: x.csv, finding_columns: [A, A, path, "
     "No Finding]}}", r"\['A'\] listed twice; \['path'\] is the id or patient column; "
                      r"\['No Finding'\] cannot name a finding"),
    ("task: multilabel\ndata: {labels: {from: csv, csv: x.csv, finding_columns: []}}",
     "finding_columns is empty"),
])
def test_bad_label_config_is_refused_on_load(tmp_path: Path, yaml: str, message: str) -> None:
    (tmp_path / "medops.yaml").write_text(f"project: p\n{yaml}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "medops.yaml")


def test_multilabel_project_config_loads(tmp_path: Path) -> None:
    (tmp_path / "medops.yaml").write_text(
        "project: p\ntask: multilabel\ndata:\n  labels: {from: csv, csv: labels.csv, "
        "id_column: Image Index, label_column: Finding Labels, patient_column: Patient ID}\n")
    cfg = load_config(tmp_path / "medops.yaml")
    assert cfg.task is Task.MULTILABEL and cfg.data.labels.label_column == "Finding Labels"


def test_folder_names_with_multilabel_is_an_error_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "Effusion").mkdir()
    FolderSource(tmp_path, LabelsConfig(), task=Task.MULTICLASS)  # unchanged
    with pytest.raises(ConfigError, match=r"folder name gives one class per image.*fix: "
                                          r"data.labels: \{from: csv"):
        FolderSource(tmp_path, LabelsConfig(), task=Task.MULTILABEL)


def test_real_nih_images_through_a_folder_source(tmp_path: Path, shared_data: Path) -> None:
    """The two NIH ChestX-ray14 images in ../shared/data/xray, labelled by their NIH rows."""
    _csv(tmp_path, "\n".join([NIH_HEADER, NIH_ROWS[0], NIH_ROWS[4]]) + "\n")
    cfg = LabelsConfig(**{**NIH, "from": LabelsFrom.CSV})
    source = FolderSource(shared_data / "xray", cfg, csv_root=tmp_path, task=Task.MULTILABEL)
    items = {Path(i.uri).name: i for i in source.list_items()}
    assert items["00000001_000.png"].label == "Cardiomegaly"
    assert items["00027426_000.png"].label == NO_FINDING
    assert items["00000001_000.png"].patient_id != items["00027426_000.png"].patient_id
    assert items["16747_3_1.jpg"].label is None  # not in the CSV: no label


def test_bare_file_names_match_in_sub_folders(tmp_path: Path, shared_data: Path) -> None:
    """NIH ships its PNGs in images_001/images/ ... while Image Index holds bare file names."""
    root = tmp_path / "nih"
    for folder, name in (("images_001", "00000001_000.png"), ("images_012", "00027426_000.png")):
        (root / folder / "images").mkdir(parents=True)
        shutil.copy(shared_data / "xray" / name, root / folder / "images" / name)
    _csv(tmp_path, "\n".join([NIH_HEADER, NIH_ROWS[0], NIH_ROWS[4]]) + "\n")
    source = FolderSource(root, LabelsConfig(**NIH), csv_root=tmp_path, task=Task.MULTILABEL)
    labels = {Path(i.uri).name: i.label for i in source.list_items()}
    assert labels == {"00000001_000.png": "Cardiomegaly", "00027426_000.png": NO_FINDING}
