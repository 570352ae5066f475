"""medops' own pixel decoder plugin for pydicom: lossless JPEG through libjpeg-turbo.

Lossless JPEG (processes 14 and 14 SV1) is what most archives hold CR, DX and CT in. Of
pydicom's plugins, pylibjpeg-libjpeg decodes it about 5x slower than libjpeg-turbo, and gdcm
(2x faster than pylibjpeg) aborts the whole interpreter on damaged JPEG data (see
``_LAST_RESORT`` in :mod:`medops.data.dicom`). libjpeg-turbo >= 3 (through imagecodecs) decodes
lossless JPEG of 2 to 16 bits, bit-exact with pylibjpeg-libjpeg, and raises on damaged data.

The plugin lives in a :class:`~pydicom.pixels.decoders.base.Decoder` of medops' own
(:func:`own_decoder`), tried before pydicom's: adding it to pydicom's decoders would change
them for everything else in the process. Without imagecodecs (or with one built against
another libjpeg) there is no own decoder, and pydicom's plugins decode as before.
"""

from __future__ import annotations

import functools

from pydicom.pixels.decoders.base import Decoder, DecodeRunner
from pydicom.uid import UID, JPEGLossless, JPEGLosslessSV1

#: The plugin's label in failure messages.
LABEL = "libjpeg-turbo"

# What pydicom asks of a decoder plugin module: the packages it needs per syntax...
DECODER_DEPENDENCIES = {
    JPEGLossless: ("imagecodecs>=2024.1.1",),
    JPEGLosslessSV1: ("imagecodecs>=2024.1.1",),
}


def is_available(uid: str) -> bool:
    """... and whether they are here: imagecodecs built with libjpeg-turbo 3 or later (the
    first with lossless JPEG)."""
    if uid not in DECODER_DEPENDENCIES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    if not imagecodecs.JPEG8.available:
        return False
    library, _, version = imagecodecs.jpeg8_version().partition(" ")  # "libjpeg_turbo 3.1.3/8.0"
    major = version.split(".", 1)[0]
    return library == "libjpeg_turbo" and major.isdigit() and int(major) >= 3


@functools.cache  # one per syntax, as pydicom keeps its own: building one imports the plugin
def own_decoder(uid: UID) -> Decoder | None:
    """medops' decoder holding the libjpeg-turbo plugin for ``uid``; None where the plugin
    does not serve ``uid`` or cannot run here."""
    if not is_available(uid):
        return None
    decoder = Decoder(uid)
    decoder.add_plugin(LABEL, (__name__, "decode_frame"))
    return decoder


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's JPEG codestream ``src`` as the samples it holds, little endian, colour by
    pixel; pydicom then shapes them, corrects signed values and converts colour, as it does
    for pylibjpeg's output."""
    import imagecodecs

    samples = runner.samples_per_pixel
    if samples != 1 and runner.photometric_interpretation != "RGB":
        # libjpeg-turbo converts no colour in lossless mode; what pylibjpeg makes of a YBR
        # lossless frame stays its answer.
        raise NotImplementedError(
            f"{LABEL} decodes monochrome and RGB lossless JPEG, not "
            f"{runner.photometric_interpretation}"
        )
    arr = imagecodecs.jpeg8_decode(src)
    expected = (runner.rows, runner.columns) + ((samples,) if samples > 1 else ())
    if arr.shape != expected:
        raise ValueError(
            f"the JPEG codestream holds a {arr.shape} image where the dataset says {expected}"
        )
    bits = arr.dtype.itemsize * 8
    if bits > runner.bits_allocated:  # pydicom would cut each value down to fit, silently
        raise ValueError(
            f"the JPEG codestream holds {bits}-bit samples where Bits Allocated is "
            f"{runner.bits_allocated}"
        )
    # 8-bit precision comes back in bytes even where Bits Allocated is 16: say so, as
    # pydicom's own plugins do, and pydicom widens the frame.
    runner.set_option("bits_allocated", bits)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
