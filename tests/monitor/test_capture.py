"""The capture store on real Parquet files: day partitions, time windows, feedback joins."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from medops.errors import DataError
from medops.monitor import (
    STAT_NAMES,
    CaptureRecord,
    CaptureStore,
    CaptureWriter,
    Feedback,
    intensity_stats,
)

T0 = datetime(2026, 3, 1, 23, 59, 0, tzinfo=timezone.utc)


def _record(request_id: str, t: datetime, image: int = 0, predicted: str = "a") -> CaptureRecord:
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    return CaptureRecord(
        request_id=request_id, image=image, time=t, model_name="m", model_version="3",
        predicted=predicted, classes=["a", "b"], probabilities=[0.7, 0.3],
        input_format="png", height=8, width=8,
        stats={**intensity_stats(x, "pre"), **intensity_stats(x * 10, "raw")},
        embedding=[0.5, -1.0, 2.0])


def test_intensity_stats_are_exact_for_small_images() -> None:
    x = np.arange(101, dtype=np.float32)
    s = intensity_stats(x, "pre")
    assert set(s) == {f"pre_{n}" for n in STAT_NAMES}
    assert s["pre_mean"] == 50 and s["pre_min"] == 0 and s["pre_max"] == 100
    assert s["pre_p01"] == 1 and s["pre_p50"] == 50 and s["pre_p99"] == 99
    assert s["pre_std"] == pytest.approx(float(np.std(x)))
    big = np.random.default_rng(0).normal(100, 10, size=(2000, 2000)).astype(np.float32)
    sb = intensity_stats(big, "raw")  # percentiles from a sample: close, min/max exact
    assert sb["raw_p50"] == pytest.approx(100, abs=0.5)
    assert sb["raw_max"] == float(big.max())


def test_append_partitions_by_day_and_reads_a_window(tmp_path: Path) -> None:
    store = CaptureStore.under(tmp_path)
    later = T0 + timedelta(minutes=2)  # the next UTC day
    assert store.append([_record("r1", T0), _record("r2", later), _record("r2", later, 1)]) == 3
    days = sorted(p.name for p in (tmp_path / "capture" / "requests").iterdir())
    assert days == ["date=2026-03-01", "date=2026-03-02"]

    everything = store.read()
    assert list(everything["request_id"]) == ["r1", "r2", "r2"]
    assert list(everything["image"]) == [0, 0, 1]
    first = everything.iloc[0]
    assert list(first["embedding"]) == [0.5, -1.0, 2.0]
    assert list(first["probabilities"]) == [0.7, 0.3] and list(first["classes"]) == ["a", "b"]
    assert first["pre_max"] == 63 and first["raw_max"] == 630

    second_day = store.read(start=T0 + timedelta(seconds=1))
    assert list(second_day["request_id"]) == ["r2", "r2"]
    first_day = store.read(end=later)
    assert list(first_day["request_id"]) == ["r1"]
    assert store.read(start=later + timedelta(days=5)).empty
    assert "label" in everything.columns and everything["label"].isna().all()


def test_feedback_joins_and_the_latest_label_wins(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "cap")
    store.append([_record("r1", T0), _record("r2", T0, 0), _record("r2", T0, 1)])
    store.add_feedback([Feedback("r1", "a", time=T0 + timedelta(hours=1)),
                        Feedback("r2", "b", image=1, time=T0 + timedelta(hours=1))])
    store.add_feedback([Feedback("r1", "b", time=T0 + timedelta(hours=2)),
                        Feedback("unknown-yet", "a")])  # accepted: capture is asynchronous
    frame = store.read().set_index(["request_id", "image"])
    assert frame.loc[("r1", 0), "label"] == "b"
    assert frame.loc[("r2", 1), "label"] == "b"
    assert frame["label"].isna().sum() == 1  # r2 image 0 has no ground truth
    assert len(store.feedback()) == 4
    with pytest.raises(DataError, match="request id and a label"):
        store.add_feedback([Feedback(" ", "a")])


def test_feedback_csv_import(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "cap")
    store.append([_record("r1", T0), _record("r2", T0)])
    good = tmp_path / "labels.csv"
    good.write_text("request_id,label\nr1,b\nr2,a\n")
    assert store.import_feedback_csv(good) == 2
    assert dict(zip(store.read()["request_id"], store.read()["label"], strict=True)) == \
        {"r1": "b", "r2": "a"}

    bad_columns = tmp_path / "bad.csv"
    bad_columns.write_text("id,truth\nr1,b\n")
    with pytest.raises(DataError, match="expected the columns request_id,label"):
        store.import_feedback_csv(bad_columns)
    missing = tmp_path / "missing.csv"
    missing.write_text("request_id,label\nr1,\n")
    with pytest.raises(DataError, match="line 2"):
        store.import_feedback_csv(missing)
    with pytest.raises(DataError, match="cannot read"):
        store.import_feedback_csv(tmp_path / "nope.csv")
    unknown_label = tmp_path / "unknown_label.csv"
    unknown_label.write_text("request_id,label\nr1,a\nr2,zzz\n")
    with pytest.raises(DataError, match=r"line 3: label 'zzz' is not one of the model's classes "
                       r"\['a', 'b'\] \(nothing was imported\)"):
        store.import_feedback_csv(unknown_label)
    unknown_request = tmp_path / "unknown_request.csv"
    unknown_request.write_text("request_id,label,image\nr1,a,0\nr1,a,1\n")
    with pytest.raises(DataError, match=r"line 3: no captured prediction has request_id 'r1' "
                       r"\(image 1\)"):
        store.import_feedback_csv(unknown_request)
    assert len(store.feedback()) == 2  # a failed import stores nothing


def test_background_writer_batches_and_flushes_on_close(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "cap")
    writer = CaptureWriter(store, flush_seconds=60)  # only close() will write
    writer.submit([_record(f"r{i}", T0) for i in range(5)])
    writer.submit([_record("r5", T0)])
    writer.submit_feedback([Feedback("r0", "b")])
    writer.close()
    files = list((tmp_path / "cap" / "requests").rglob("*.parquet"))
    assert len(files) == 1  # one file per flush, not per request
    frame = store.read()
    assert len(frame) == 6 and writer.written == 6
    assert frame.set_index("request_id").loc["r0", "label"] == "b"


def test_writer_keeps_rows_when_the_disk_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "cap"
    blocker.write_text("a file where the store's folder should be")
    writer = CaptureWriter(CaptureStore(blocker), flush_seconds=60)
    writer.submit([_record("r1", T0)])
    writer.flush()  # fails: rows stay buffered
    assert writer.written == 0 and writer.dropped == 0
    blocker.unlink()
    writer.close()
    assert writer.written == 1
    assert list(CaptureStore(blocker).read()["request_id"]) == ["r1"]


@pytest.mark.parametrize("n", [1, 2, 7, 4096, 70_001])
def test_percentiles_equal_numpys(n: int) -> None:
    from medops.monitor.capture import _PERCENTILES, _percentiles

    values = np.random.default_rng(n).normal(size=n).astype(np.float32)
    np.testing.assert_allclose(_percentiles(values), np.percentile(values, _PERCENTILES),
                               rtol=1e-6, atol=1e-6)
