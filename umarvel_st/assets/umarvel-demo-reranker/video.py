"""Video files as items: decoding and frame sampling as the U-MARVEL reference does it (zero-shot spec section 1.6).

Frames are sampled at 2 fps (at least 4, at most 768, an even count) or a fixed count (the reference's MSVD items
ask for 12) with ``linspace(0, T - 1, n).round()``, then resized on the 28-grid to a per-frame budget of
``max(min(768*28*28, 24576*28*28 / n * 2), int(128*28*28 * 1.05))`` pixels with at least ``128*28*28`` (small
videos are upscaled), bicubic.

The reference reads every frame into memory first. Here a first pass counts the frames from the container's
packets without decoding them, and the second pass decodes up to the last sampled frame, converting and resizing
only the sampled ones as they come, so memory is bounded by the sampled frames at their final size. At most
:data:`MAX_DECODED_FRAMES` frames are read from a file (a longer clip is sampled from its start, with a warning),
which bounds the time. A clip shorter than a fixed frame count (the reference raises there) is sampled with
repeated frames and a warning, so one short clip does not end a long evaluation.

Decoding uses PyAV (``av``, a dependency of this package), imported only when a video file is read.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from .inputs import smart_resize

logger = logging.getLogger(__name__)

FPS = 2.0
MIN_FRAMES = 4
MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28
#: Frames read at most from one file (bounds the decoding time; the reference reads every frame).
MAX_DECODED_FRAMES = 20_000


def frame_count(total: int, video_fps: float, nframes: int | None = None) -> int:
    """Number of frames to sample from a clip of ``total`` frames at ``video_fps`` (fixed ``nframes`` if given)."""
    if nframes is not None:
        return max(2, round(nframes / 2) * 2)
    low = math.ceil(MIN_FRAMES / 2) * 2
    high = math.floor(min(MAX_FRAMES, total) / 2) * 2
    wanted = min(max(total / video_fps * FPS, low), high)
    return max(2, round(wanted / 2) * 2)


def frame_pixels(count: int) -> int:
    """The per-frame pixel budget for ``count`` sampled frames."""
    return int(max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / count * 2), int(VIDEO_MIN_PIXELS * 1.05)))


def _import_av() -> Any:
    try:
        import av
    except ImportError as error:
        raise ImportError(
            "Reading video files needs PyAV (`pip install av`); or pass the frames as a list of images."
        ) from error
    return av


def read_video_frames(
    path: str | os.PathLike[str], nframes: int | None = None, max_image_pixels: int | None = None
) -> list[Image.Image]:
    """Decode the video file ``path`` and return its sampled frames, resized by the video rule (an even count).

    Args:
        path: A video file in any container FFmpeg reads (``.mp4``, ``.avi``, ``.mkv``, ``.gif``...).
        nframes: A fixed frame count (the reference's MSVD: 12), or ``None`` for 2 fps sampling.
        max_image_pixels: Refuse a video whose frames have more pixels (width x height); ``None``: no limit.

    Raises:
        ValueError: If the file is missing, cannot be decoded, holds no frame or has frames above
            ``max_image_pixels``; the message names the file.
        ImportError: If PyAV is not installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"video file {path!r} does not exist or is not a file.")
    av = _import_av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"video file {path!r} holds no video stream (no frame); re-encode or remove it.")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            total = sum(1 for packet in container.demux(stream) if packet.size)
            video_fps = float(stream.average_rate or 0) or 1.0
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise ValueError(f"video file {path!r} cannot be decoded ({error}).") from error
    if total == 0:
        raise ValueError(f"video file {path!r} holds no frame; re-encode or remove it.")
    if max_image_pixels is not None and width * height > max_image_pixels:
        raise ValueError(
            f"video file {path!r} has {width}x{height} frames, more than max_image_pixels={max_image_pixels:,} "
            "pixels; downscale it or raise max_image_pixels."
        )
    if total > MAX_DECODED_FRAMES:
        logger.warning("Video %s has %d frames; only the first %d are sampled.", path, total, MAX_DECODED_FRAMES)
        total = MAX_DECODED_FRAMES
    count = frame_count(total, video_fps, nframes)
    if count > total:
        logger.warning(
            "Video %s has %d frames, fewer than the %d sampled; frames are repeated (the reference raises here).",
            path,
            total,
            count,
        )
    wanted = Counter(np.linspace(0, total - 1, count).round().astype(int).tolist())  # index -> times sampled
    last = max(wanted)
    frames: list[Image.Image] = []
    try:
        with av.open(path) as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index > last:
                    break
                if index in wanted:
                    if not frames:  # every frame takes the first sampled frame's size, as in the reference
                        size = smart_resize(frame.height, frame.width, 28, VIDEO_MIN_PIXELS, frame_pixels(count))
                        new_height, new_width = size
                    image = frame.to_image().resize((new_width, new_height), Image.Resampling.BICUBIC)
                    frames += [image] * wanted[index]
    except av.error.FFmpegError as error:
        raise ValueError(f"video file {path!r} cannot be decoded ({error}).") from error
    if not frames:
        raise ValueError(f"video file {path!r} holds no decodable frame; re-encode or remove it.")
    return frames + frames[-1:] * (count - len(frames))  # a stream that decodes fewer frames than it has packets
