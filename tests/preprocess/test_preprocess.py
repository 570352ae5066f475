"""Profiles, transforms, the array cache and batch preprocessing, on real DICOM and PNG files."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medops.config.enums import FrameMode, Normalize, WindowMode
from medops.config.schema import PreprocessConfig
from medops.data.images import ImageFormat, ImageInfo, read_pixels
from medops.errors import ConfigError, DataError, UnsupportedImageError
from medops.executor import LocalExecutor, SerialExecutor
from medops.preprocess import (
    PreprocessCache,
    PreprocessProfile,
    PreprocessTask,
    apply_profile,
    load_arrays,
    preprocess_bytes,
    preprocess_file,
    preprocess_items,
    resolve_profile,
)
from medops.preprocess.transforms import resize
from tests.samples import pydicom_file

SHARED = (Path(__file__).parents[2] / "../shared/data").resolve()
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "examples_ybr_color.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_jp2klossless.dcm",
    "JPGExtended.dcm",
)


def profile(**changes: object) -> PreprocessProfile:
    values: dict[str, object] = dict(
        size=(32, 24),
        channels=1,
        window=WindowMode.AUTO,
        normalize=Normalize.ZSCORE,
        frames=FrameMode.MIDDLE,
    )
    values.update(changes)
    return PreprocessProfile.model_validate(values)


def info(rows: int, cols: int, samples: int = 1) -> ImageInfo:
    return ImageInfo(
        format=ImageFormat.PNG,
        rows=rows,
        cols=cols,
        n_frames=1,
        samples_per_pixel=samples,
        photometric=None,
        transfer_syntax=None,
        modality=None,
        patient_id=None,
        study_uid=None,
        series_uid=None,
        sop_uid=None,
        bits_stored=8,
        burned_in_annotation=None,
    )


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Real files copied into tmp_path: pydicom's, plus the shared x-ray PNGs if present."""
    out = []
    for name in PYDICOM_FILES:
        out.append(Path(shutil.copy(pydicom_file(name), tmp_path / name)))
    out += [Path(shutil.copy(p, tmp_path / p.name)) for p in sorted(SHARED.glob("xray/*.png"))]
    return out


def tasks_for(paths: list[Path]) -> list[PreprocessTask]:
    return [
        PreprocessTask(
            key=p.name,
            uri=str(p),
            frame=None,
            content_hash=hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in paths
    ]


# -- profile --------------------------------------------------------------------------------------


def test_profile_json_round_trip_and_fingerprint() -> None:
    p = profile()
    assert PreprocessProfile.from_json(p.to_json()) == p
    assert p.to_json() == (
        '{"channels":1,"frames":"middle","normalize":"zscore",'
        '"size":[32,24],"version":1,"window":"auto"}'
    )
    assert len(p.fingerprint()) == 16 and p.fingerprint() == profile().fingerprint()
    assert p.fingerprint() != profile(normalize=Normalize.MINMAX).fingerprint()
    with pytest.raises(ConfigError, match="invalid preprocessing profile"):
        PreprocessProfile.from_json('{"size": [32, 24], "channels": 2}')


def test_resolve_auto_size_and_channels() -> None:
    cfg = PreprocessConfig()  # size auto, at most 128; channels auto
    p = resolve_profile(cfg, FrameMode.MIDDLE, [info(512, 512), info(256, 300), info(1024, 900)])
    assert (p.size, p.channels) == ((128, 128), 1)
    p = resolve_profile(cfg, FrameMode.EACH, [info(1000, 500, 3), info(1000, 500, 3), info(10, 5)])
    assert (p.size, p.channels, p.frames) == ((128, 64), 3, FrameMode.EACH)
    assert resolve_profile(cfg, FrameMode.MIDDLE, [info(40, 2)]).size == (40, 8)  # min side
    fixed = PreprocessConfig(size=(64, 48), channels=3, normalize=Normalize.MINMAX)
    p = resolve_profile(fixed, FrameMode.MIDDLE, [])
    assert (p.size, p.channels, p.normalize) == ((64, 48), 3, Normalize.MINMAX)
    with pytest.raises(DataError, match="without any image"):
        resolve_profile(cfg, FrameMode.MIDDLE, [])


# -- transforms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(50, 40), (50, 40, 3)])
@pytest.mark.parametrize("channels", [1, 3])
def test_apply_profile_shapes_and_zscore(shape: tuple[int, ...], channels: int) -> None:
    pixels = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    out = apply_profile(pixels, profile(channels=channels))
    assert out.shape == (channels, 32, 24) and out.dtype == np.float32
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4


def test_minmax_constant_and_non_finite() -> None:
    ramp = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    out = apply_profile(ramp, profile(normalize=Normalize.MINMAX))
    assert out.min() == 0 and out.max() == 1
    for how in (Normalize.ZSCORE, Normalize.MINMAX):  # the per-image ones (txv is fixed)
        flat = apply_profile(np.full((64, 48), 1234.5, np.float32), profile(normalize=how))
        assert not flat.any()
    with pytest.raises(UnsupportedImageError, match="NaN"):
        apply_profile(np.full((64, 48), np.nan, np.float32), profile())


def test_rgb_to_gray_uses_luminance() -> None:
    rgb = np.zeros((32, 24, 3), np.float32)
    rgb[:16, :, 0], rgb[16:, :, 1] = 1, 1  # top red, bottom green
    out = apply_profile(rgb, profile(normalize=Normalize.MINMAX))[0]
    gray = np.where(np.arange(32)[:, None] < 16, 0.299, 0.587) * np.ones((1, 24))
    np.testing.assert_allclose(out, (gray - 0.299) / (0.587 - 0.299), atol=1e-6)


def test_resize_is_anti_aliased() -> None:
    checker = (np.indices((256, 192)).sum(axis=0) % 2).astype(np.float32)  # 1-px checkerboard
    small = resize(checker, (32, 24))
    # point sampling would alias to a solid colour or stripes; a proper low-pass gives grey
    assert small.shape == (32, 24) and small.dtype == np.float32
    np.testing.assert_allclose(small, 0.5, atol=0.02)


def test_preprocess_bytes_matches_file() -> None:
    path = pydicom_file("MR_small_jp2klossless.dcm")
    p = profile(channels=3)
    np.testing.assert_array_equal(
        preprocess_bytes(path.read_bytes(), p), preprocess_file(path, None, p)
    )
    expected = apply_profile(read_pixels(path), p)
    np.testing.assert_array_equal(preprocess_file(path, None, p), expected)


# -- cache ----------------------------------------------------------------------------------------


def test_cache_layout_atomic_put_and_damage(tmp_path: Path) -> None:
    cache, p = PreprocessCache(tmp_path / "cache"), profile()
    array = np.arange(32 * 24, dtype=np.float32).reshape(1, 32, 24)
    assert cache.get(p, "ab" * 32) is None and not cache.contains(p, "ab" * 32)
    path = cache.put(p, "ab" * 32, 3, array)
    assert path == tmp_path / "cache" / p.fingerprint() / "ab" / f"{'ab' * 32}_f3.npy"
    assert cache.contains(p, "ab" * 32, 3) and not cache.contains(p, "ab" * 32)
    np.testing.assert_array_equal(cache.get(p, "ab" * 32, 3), array)
    assert [f.name for f in path.parent.iterdir()] == [path.name]  # no temporary left over
    path.write_bytes(path.read_bytes()[:40])  # damaged on disk: a miss, and removed
    assert cache.get(p, "ab" * 32, 3) is None and not path.exists()
    with pytest.raises(ValueError, match="invalid content hash"):
        cache.path(p, "../../etc")


# -- batch runs -----------------------------------------------------------------------------------


def test_preprocess_items_caches_and_reports_failures(tmp_path: Path, files: list[Path]) -> None:
    bad = tmp_path / "corrupt.dcm"
    bad.write_bytes(files[0].read_bytes()[:3000])
    tasks = tasks_for([*files, bad])
    tasks.append(PreprocessTask("ybr_frame_2", tasks[2].uri, 2, tasks[2].content_hash))
    p, cache = profile(channels=3), PreprocessCache(tmp_path / "cache")
    seen: list[tuple[int, int]] = []
    with SerialExecutor() as ex:
        report = preprocess_items(tasks, p, cache, ex, progress=lambda d, t: seen.append((d, t)))
    assert list(report.failures) == ["corrupt.dcm"]
    assert "truncated" in report.failures["corrupt.dcm"]
    assert (report.computed, report.cached) == (len(tasks) - 1, 0)
    assert seen[0] == (0, len(tasks)) and seen[-1] == (len(tasks), len(tasks))

    odd = PreprocessTask("odd", tasks[0].uri, None, "../../etc")  # a malformed hash
    with SerialExecutor() as ex:
        again = preprocess_items([*tasks, odd], p, cache, ex)
    assert (again.computed, again.cached) == (0, len(tasks) - 1)
    assert sorted(again.failures) == ["corrupt.dcm", "odd"]
    assert "invalid content hash" in again.failures["odd"]
    good = [t for t in tasks if t.key != "corrupt.dcm"]
    arrays = load_arrays(good, p, cache)
    assert arrays.shape == (len(good), 3, 32, 24) and arrays.dtype == np.float32
    np.testing.assert_array_equal(arrays[0], preprocess_file(files[0], None, p))
    assert not np.array_equal(arrays[2], arrays[-1])  # middle frame vs frame 2
    with pytest.raises(DataError, match=r"1 item\(s\) have no preprocessed array"):
        load_arrays(tasks, p, cache)


def test_process_pool_matches_serial(tmp_path: Path, files: list[Path]) -> None:
    tasks, p = tasks_for(files), profile(size=(40, 40))
    serial_cache, pool_cache = PreprocessCache(tmp_path / "s"), PreprocessCache(tmp_path / "p")
    with SerialExecutor() as ex:
        preprocess_items(tasks, p, serial_cache, ex)
    with LocalExecutor(workers=2) as ex:
        report = preprocess_items(tasks, p, pool_cache, ex)
    assert (report.computed, report.failures) == (len(tasks), {})
    np.testing.assert_array_equal(
        load_arrays(tasks, p, pool_cache), load_arrays(tasks, p, serial_cache)
    )


def test_png_input(tmp_path: Path) -> None:
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (48, 1))).save(tmp_path / "a.png")
    out = preprocess_file(tmp_path / "a.png", None, profile(normalize=Normalize.MINMAX))
    assert out.shape == (1, 32, 24) and out.min() == 0 and out.max() == 1
