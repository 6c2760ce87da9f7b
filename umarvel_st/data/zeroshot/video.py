"""Video decoding and frame sampling as the U-MARVEL zero-shot evaluation does it (spec section 1.6).

Frames are sampled at 2 fps (at least 4, at most 768, an even count) or a fixed count (MSVD: 12) with
``linspace(0, T - 1, n).round()``, then resized on the 28-grid to a per-frame budget of
``max(min(768*28*28, 24576*28*28 / n * 2), int(128*28*28 * 1.05))`` pixels with at least ``128*28*28`` (small
videos are upscaled), bicubic.

GIF files decode with PIL (the synthetic copies use them); other containers (``.mp4``, ``.avi``) through PyAV
(a dependency). A clip shorter than a fixed frame count (the reference raises there) is sampled with repeated
frames and a warning, so one short clip does not end a long evaluation. An undecodable or empty file raises a
``ValueError`` naming it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from ...modeling.inputs import smart_resize

logger = logging.getLogger(__name__)

FPS = 2.0
MIN_FRAMES = 4
MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28
#: Frames decoded at most from one file (bounds memory: the reference reads every frame).
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
    return max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / count * 2), int(VIDEO_MIN_PIXELS * 1.05))


def _decode(path: Path) -> tuple[list[Image.Image], float]:
    if path.suffix.lower() == ".gif":
        try:
            with Image.open(path) as gif:
                durations, frames = [], []
                for frame in ImageSequence.Iterator(gif):
                    if len(frames) >= MAX_DECODED_FRAMES:
                        break
                    durations.append(frame.info.get("duration") or 100)
                    frames.append(frame.convert("RGB"))
        except (OSError, ValueError) as error:
            raise ValueError(f"Video {path} cannot be decoded: {error}.") from error
        return frames, 1000.0 / (sum(durations) / max(len(durations), 1))
    import av  # PyAV, a dependency: MSR-VTT and MSVD ship .mp4 / .avi files

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = []
            for frame in container.decode(stream):
                if len(frames) >= MAX_DECODED_FRAMES:
                    break
                frames.append(frame.to_image())
            fps = float(stream.average_rate or 0) or 1.0
    except (av.error.FFmpegError, IndexError) as error:
        raise ValueError(f"Video {path} cannot be decoded: {error}.") from error
    return frames, fps


def read_video_frames(path: str | Path, nframes: int | None = None) -> list[Image.Image]:
    """Decode ``path`` and return the sampled, resized frames (an even count).

    Args:
        path: A video file (GIF through PIL; ``.mp4``, ``.avi`` and the rest through PyAV).
        nframes: A fixed frame count (MSVD: 12), or ``None`` for 2 fps sampling.

    Raises:
        ValueError: If the file is missing, cannot be decoded or holds no frame.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Video {path} does not exist.")
    frames, video_fps = _decode(path)
    if not frames:
        raise ValueError(f"Video {path} holds no frame; re-encode or remove it.")
    count = frame_count(len(frames), video_fps, nframes)
    if count > len(frames):
        logger.warning(
            "Video %s has %d frames, fewer than the %d sampled; frames are repeated (the reference raises here).",
            path,
            len(frames),
            count,
        )
    indices = np.linspace(0, len(frames) - 1, count).round().astype(int)
    width, height = frames[0].size
    new_height, new_width = smart_resize(height, width, 28, VIDEO_MIN_PIXELS, int(frame_pixels(count)))
    return [frames[i].resize((new_width, new_height), Image.Resampling.BICUBIC) for i in indices]
