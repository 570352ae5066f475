"""The TorchXRayVision input convention: medops' preprocessing of the real chest X-rays in
../shared/data/xray equals TorchXRayVision's own pipeline, as its README runs it
(``xrv.datasets.normalize`` + ``img.mean(2)`` for colour, ``XRayCenterCrop``, ``XRayResizer``;
``xrv.utils.read_xray_dcm`` for DICOM), to within 1e-5."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medops.config.enums import FrameMode, Normalize, WindowMode
from medops.config.models import txv_resolution
from medops.config.schema import PreprocessConfig
from medops.data.images import read_pixels_with_range
from medops.preprocess import (
    PreprocessProfile,
    preprocess_bytes,
    preprocess_file,
    resolve_profile,
    txv_overrides,
    txv_profile,
)
from medops.preprocess.profile import Crop, Resample

xrv = pytest.importorskip("torchxrayvision", reason="the txv extra is not installed")
skimage_io = pytest.importorskip("skimage.io", reason="the txv extra is not installed")

SHARED = (Path(__file__).parents[2] / "../shared/data").resolve()
XRAYS = sorted(p for p in (SHARED / "xray").rglob("*")
               if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".dcm"})
TOLERANCE = 1e-5


@pytest.fixture
def pydicom_decodes_like_medops(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pydicom's default plugin order decodes JPEG baseline with gdcm first; medops prefers
    pylibjpeg (bit-exact with reference decoders, see medops.data.dicom). The two IDCTs differ
    by one grey level on these files (8 units after scaling to [-1024, 1024]): that is a decoder
    choice, not the convention. So TorchXRayVision's reader runs here with gdcm set aside, and
    :func:`test_decoders_differ_by_one_grey_level_at_most` bounds the difference gdcm makes."""
    from pydicom.pixels.decoders import JPEGBaseline8BitDecoder

    plugins = {k: v for k, v in JPEGBaseline8BitDecoder._available.items() if k != "gdcm"}
    monkeypatch.setattr(JPEGBaseline8BitDecoder, "_available", plugins)
    yield


def txv_reference(path: Path, side: int = 224) -> np.ndarray:
    """TorchXRayVision's own preprocessing of one file, (1, side, side) float32."""
    if path.suffix.lower() == ".dcm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its MONOCHROME1 notice
            img = xrv.utils.read_xray_dcm(path)
    else:
        img = xrv.datasets.normalize(skimage_io.imread(path), 255)
        if img.ndim == 3:
            img = img.mean(2)
    transform = [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(side)]
    x = img[None, ...]
    for t in transform:
        x = t(x)
    return np.asarray(x, dtype=np.float32)


def test_the_shared_xrays_are_there() -> None:
    kinds = {p.suffix.lower() for p in XRAYS}
    assert {".png", ".jpg", ".dcm"} <= kinds, f"../shared/data/xray lacks some formats: {kinds}"
    assert any(p.name == "Fake_MONOHR1.dcm" for p in XRAYS)


@pytest.mark.usefixtures("pydicom_decodes_like_medops")
@pytest.mark.parametrize("path", XRAYS, ids=lambda p: p.name)
def test_medops_equals_torchxrayvision(path: Path) -> None:
    try:
        expected = txv_reference(path)
    except (NotImplementedError, ValueError) as exc:  # e.g. colour DICOM, 16-bit PNG
        pytest.skip(f"TorchXRayVision itself cannot read {path.name}: {exc}")
    profile = txv_profile(224)
    got = preprocess_file(path, None, profile)
    assert got.shape == expected.shape == (1, 224, 224)
    assert got.dtype == np.float32
    assert float(np.abs(got - expected).max()) <= TOLERANCE
    # serving reads request bodies: the same numbers
    assert np.array_equal(preprocess_bytes(path.read_bytes(), profile), got)


def test_monochrome1_is_inverted_as_torchxrayvision_does() -> None:
    normal = SHARED / "xray/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    inverted = SHARED / "xray/Fake_MONOHR1.dcm"
    a = preprocess_file(normal, None, txv_profile(224))
    b = preprocess_file(inverted, None, txv_profile(224))
    # the same stored pixels, read as MONOCHROME1: the scaled image is mirrored around 0
    assert float(np.abs(a + b).max()) <= 1e-3


def test_decoders_differ_by_one_grey_level_at_most() -> None:
    path = SHARED / "xray/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    diff = np.abs(preprocess_file(path, None, txv_profile(224)) - txv_reference(path))
    assert float(diff.max()) <= 2048 / 255 + 1e-3


def test_value_ranges() -> None:
    png = SHARED / "xray/00000001_000.png"
    dcm = SHARED / "xray/Fake_MONOHR1.dcm"
    assert read_pixels_with_range(png)[1] == (0.0, 255.0)
    assert read_pixels_with_range(dcm, window=WindowMode.NONE)[1] == (0.0, 255.0)


def test_sixteen_bit_png_scales_by_its_own_depth(tmp_path: Path) -> None:
    """TorchXRayVision's normalize(img, 255) refuses a 16-bit PNG; medops scales it by 65535,
    so the same picture stored in 8 or 16 bits gives the same input."""
    from PIL import Image

    img8 = skimage_io.imread(SHARED / "xray/00000001_000.png").astype(np.uint16)
    Image.fromarray(img8 * 257).save(tmp_path / "x16.png")
    Image.fromarray(img8.astype(np.uint8)).save(tmp_path / "x8.png")
    profile = txv_profile(64)
    a = preprocess_file(tmp_path / "x16.png", None, profile)
    b = preprocess_file(tmp_path / "x8.png", None, profile)
    assert float(np.abs(a - b).max()) <= 1e-3


def test_txv_profile_and_resolution() -> None:
    p = txv_profile(512)
    assert (p.size, p.channels, p.window, p.normalize, p.crop, p.resample) == (
        (512, 512), 1, WindowMode.NONE, Normalize.TXV, Crop.CENTER, Resample.SKIMAGE)
    assert PreprocessProfile.from_json(p.to_json()) == p
    assert '"crop":"center"' in p.to_json()
    assert txv_resolution("txv:densenet121-res224-all") == 224
    assert txv_resolution("txv:resnet50-res512-all") == 512
    assert txv_resolution("txv:nih") == 224


def test_existing_profiles_keep_their_text() -> None:
    """The fields the convention added stay out of the JSON at their default, so profiles
    stored by earlier versions keep their fingerprint (and the preprocess cache its folders)."""
    old = ('{"channels":1,"frames":"middle","normalize":"zscore","size":[32,24],'
           '"version":1,"window":"auto"}')
    p = PreprocessProfile.from_json(old)
    assert (p.crop, p.resample) == (Crop.NONE, Resample.PILLOW)
    assert p.to_json() == old


def test_a_txv_architecture_gets_its_profile_whatever_preprocess_says() -> None:
    cfg = PreprocessConfig.model_validate({"size": [64, 64], "channels": 3,
                                           "normalize": "minmax"})
    p = resolve_profile(cfg, FrameMode.MIDDLE, [], architecture="txv:resnet50-res512-all")
    assert p == txv_profile(512)
    notes = txv_overrides(cfg, p)
    assert len(notes) == 3
    assert any("preprocess.size: [64, 64] is ignored" in n and "[512, 512]" in n for n in notes)
    assert any("preprocess.channels: 3" in n for n in notes)
    assert any("preprocess.normalize: minmax" in n and "txv" in n for n in notes)
    # values left at their defaults (or written as the defaults, as the scaffold does) are
    # not the user's choice: nothing to warn about
    assert txv_overrides(PreprocessConfig(), p) == []
    scaffold = PreprocessConfig.model_validate({"size": "auto", "channels": "auto",
                                                "window": "auto", "normalize": "zscore"})
    assert txv_overrides(scaffold, p) == []
