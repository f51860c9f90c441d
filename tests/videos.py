"""Writers of real test videos (PyAV) whose frames say which frame they are.

Frame i shows the bits of i as ten black or white vertical bars, which survive lossy
compression and the resize to a 448 px tile; `frame_number` reads them back, so a test
can check not only which indices were sampled but that those very frames were decoded.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

BITS = 10  # frames 0..1023 can be told apart
CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def bars(index: int, width: int = 128, height: int = 72) -> np.ndarray:
    """An RGB frame showing `index` in binary, least significant bit on the left."""
    image = np.zeros((height, width, 3), np.uint8)
    for bit in range(BITS):
        if (index >> bit) & 1:
            image[:, bit * width // BITS : (bit + 1) * width // BITS] = 255
    return image


def frame_number(image: np.ndarray) -> int:
    """The index a `bars` frame shows (works on the frame or on its resized tile)."""
    width = image.shape[1]
    columns = [image[:, int((bit + 0.5) * width / BITS)].mean() for bit in range(BITS)]
    return sum(1 << bit for bit, value in enumerate(columns) if value > 127)


def write_video(
    path: Path, frames: int, fps: float | Fraction, width: int = 128, height: int = 72, codec: str | None = None
) -> Path:
    """A clip of `frames` numbered frames at `fps`; the codec follows the extension unless given.
    0 frames is allowed. (A rate must be a Fraction for PyAV: a float is refused.)"""
    import av

    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    codec = codec or CODECS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "ultrafast"}
        if frames == 0:
            container.start_encoding()  # a valid container with a video stream and no frames
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(bars(index, width, height), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A container with one AAC audio stream and no video (e.g. an .mp4 that is really a song)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = int(seconds * rate)
        for start in range(0, samples, 1024):
            count = min(1024, samples - start)
            wave = 0.2 * np.sin(2 * np.pi * 440 * np.arange(start, start + count) / rate)
            frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
