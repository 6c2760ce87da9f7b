"""Turning user items into the exact text and images the U-MARVEL reference embeds.

The rules (spec section 1): ``format`` the text, wrap a query's instruction in ``<instruction_start>`` /
``<instruction_end>`` inside the user turn, append a "Summarize above ..." suffix, convert images to RGB by
dropping alpha, and pre-resize them to multiples of 28 within a pixel budget (Qwen's ``smart_resize``).

Items follow sentence-transformers' input conventions (``sentence_transformers.base.modality``): a bare string
that names an image (a ``data:image/...`` URI, an image URL or an image file path) is an image, one that names a
video file is a video (decoded and sampled as the reference, :mod:`.video`); a 3-D ``numpy.ndarray`` /
``torch.Tensor`` is an image and a 4-D one a video; chat messages are one item. A ``{"content": [parts]}`` dict is
a verbatim item (:class:`Content`): its parts are rendered exactly as given, in order, with none of the rules
above applied to its text. Images are
untrusted input, so they are bounded before any work: the pixel count is checked from the header before decoding
(``max_image_pixels``), base64 and downloaded bytes are capped at :data:`MAX_IMAGE_BYTES`, and URLs are fetched
only when the caller allows it, from public addresses, within :data:`URL_TIMEOUT_S` seconds in total.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import math
import os
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import torch
from PIL import Image, UnidentifiedImageError
from sentence_transformers.base.modality import is_image_url_or_path, is_message_dict, is_video_url_or_path

INSTRUCTION_START = "<instruction_start>"
INSTRUCTION_END = "<instruction_end>"
EMB_TOKEN = "<emb>"
UMARVEL_TOKENS = (EMB_TOKEN, INSTRUCTION_START, INSTRUCTION_END)

SUFFIX_WITH_IMAGE = "\nSummarize above image and sentence in one word: "
SUFFIX_TEXT_ONLY = "\nSummarize above sentence in one word: "

IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 300 * 28 * 28
MAX_ASPECT_RATIO = 200

ITEM_KEYS = {"text", "image", "video", "instruction"}

#: Default ``max_image_pixels``: images whose header declares more pixels are refused before decoding.
MAX_IMAGE_PIXELS = 64_000_000
#: Largest image accepted as a base64 ``data:`` URI or a download, in bytes.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Total time allowed for one URL download (name resolution, connection, headers and body), in seconds.
URL_TIMEOUT_S = 10.0
#: Image file extensions of sentence-transformers' ``is_image_url_or_path`` (a test keeps the two in sync).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tiff", ".webp")
#: Video file extensions of sentence-transformers' ``is_video_url_or_path`` (a path string with one is a video).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".wmv", ".flv", ".mkv")
#: 16-bit and 32-bit integer modes, converted to 8 bits by value range (see :func:`to_rgb`).
INTEGER_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass
class Item:
    """One normalised input: optional text, optional image or video frames, optional instruction.

    ``video_sized`` marks frames decoded from a video file, already sized by the video rule (:mod:`.video`), which
    the encoder's image pixel budget leaves as they are.
    """

    text: str = ""
    image: Image.Image | None = None
    video: list[Image.Image] | None = None
    instruction: str | None = None
    video_sized: bool = False

    @property
    def has_visual(self) -> bool:
        return self.image is not None or self.video is not None


PartKind = Literal["text", "instruction", "image", "video"]
CONTENT_PART_KEYS: dict[str, set[str]] = {
    "text": {"type", "text"},
    "instruction": {"type", "text"},
    "image": {"type", "image"},
    "video": {"type", "video", "nframes"},
}


@dataclass
class Part:
    """One part of a :class:`Content` item: a text or instruction string, a decoded image, or video frames
    (``sized``: decoded from a file and already sized by the video rule)."""

    kind: PartKind
    value: Any
    sized: bool = False


@dataclass
class Content:
    """A verbatim item: parts rendered in order exactly as given (no formatting, no added spaces, no suffix)."""

    parts: list[Part] = field(default_factory=list)

    @property
    def instruction(self) -> str | None:
        return next((part.value for part in self.parts if part.kind == "instruction"), None)


def format_text(text: str) -> str:
    """The reference ``format``: drop ``\\r``, strip spaces and surrounding double quotes, upper-case the first
    character, and end with ``.`` unless the text already ends in ``.``, ``?`` or ``!``. Empty stays empty."""
    text = text.replace("\r", "").strip(" ").strip('"')
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    if not text.endswith((".", "?", "!")):
        text += "."
    return text


def user_text(item: Item, summarize_suffix: bool) -> str:
    """The text of the user turn: formatted text, the instruction span for queries, then the suffix."""
    if item.instruction:
        text = format_text(f"{INSTRUCTION_START}{format_text(item.instruction)}{INSTRUCTION_END} {item.text}")
    else:
        text = format_text(item.text)
    if summarize_suffix:
        text += SUFFIX_WITH_IMAGE if item.has_visual else SUFFIX_TEXT_ONLY
    return text


def smart_resize(
    height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """Qwen's ``smart_resize``: the nearest size with both sides multiples of ``factor`` and the pixel count in
    ``[min_pixels, max_pixels]``, keeping the aspect ratio. Rounds half to even (Python's ``round``)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio must be below {MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width):.0f} "
            f"({width}x{height}); crop or pad the image"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, with high-bit-depth images scaled by their value range instead of clipped.

    8-bit modes go through ``convert("RGB")`` exactly as in the reference (alpha dropped, not composited; L
    replicated). The reference also clips 16-bit and float images that way, so a 16-bit photo comes out nearly
    white; here they are scaled to [0, 255] and rounded instead (this differs from the reference):

    * ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` and ``I`` with values in [0, 65535]: ``round(v / 257)``, so 65535
      maps to 255 and an 8-bit image stored as 16 bits (``v * 257``) comes back exactly;
    * ``F`` with values in [0, 1]: ``round(v * 255)``;
    * any other range (negative or larger ``I``, ``F`` outside [0, 1]): min-max to [0, 255] (a constant image
      becomes black); NaN becomes 0.

    Raises:
        ValueError: For a float image with infinite values, or a mode PIL cannot convert to RGB.
    """
    if image.mode == "RGB":
        return image
    if image.mode not in INTEGER_HIGH_BIT_MODES and image.mode != "F":
        try:
            return image.convert("RGB")
        except ValueError as error:
            raise ValueError(
                f"image mode {image.mode!r} cannot be converted to RGB ({error}); convert it first."
            ) from error
    source = image if image.mode == "F" else image.convert("I")
    low, high = source.getextrema()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"the float image has infinite values (range {low} to {high}); replace them first.")
    if image.mode == "F" and 0 <= low and high <= 1:
        scale, offset = 255.0, 0.0
    elif image.mode != "F" and 0 <= low and high <= 65535:
        scale, offset = 1 / 257, 0.0
    else:
        scale = 255.0 / (high - low) if high > low else 0.0
        offset = -low * scale
    # `point` truncates towards zero when it writes integers, hence + 0.5 to round.
    return source.point(lambda value: value * scale + offset + 0.5).convert("L").convert("RGB")


def prepare_image(image: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """RGB conversion (:func:`to_rgb`: 8-bit modes as the reference, alpha dropped, not composited; high bit depths
    by their value range) and the factor-28 pre-resize (PIL bicubic)."""
    image = to_rgb(image)
    height, width = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels)
    if (width, height) != image.size:
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    return image


def check_image_options(allow_urls: bool, max_image_pixels: int | None) -> None:
    """Validate the image-input options of :class:`~umarvel_st.modeling.UMarvelTransformer`.

    Raises:
        TypeError: If ``allow_urls`` is not a bool, or ``max_image_pixels`` is neither an int nor None.
        ValueError: If ``max_image_pixels`` is not positive.
    """
    if not isinstance(allow_urls, bool):
        raise TypeError(f"allow_urls must be True or False, got {allow_urls!r}.")
    if max_image_pixels is not None and (isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int)):
        raise TypeError(f"max_image_pixels must be a positive int or None (no limit), got {max_image_pixels!r}.")
    if max_image_pixels is not None and max_image_pixels <= 0:
        raise ValueError(f"max_image_pixels must be positive or None (no limit), got {max_image_pixels}.")


# ---------------------------------------------------------------------------------------------------- URLs
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a download may connect to ``address``: a global unicast address, not private, loopback,
    link-local, multicast, reserved or unspecified. IPv6 addresses that embed an IPv4 address (mapped, 6to4,
    Teredo, NAT64) must pass for that IPv4 address too."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses ``host`` resolves to, or an empty list if it does not resolve within ``timeout`` seconds."""
    found: list[str] = []

    def lookup() -> None:
        try:
            found.extend(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError):
            pass

    thread = threading.Thread(target=lookup, daemon=True)  # getaddrinfo itself has no timeout
    thread.start()
    thread.join(timeout)
    return [] if thread.is_alive() else found


def _interrupt(sockets: list[socket.socket], fired: threading.Event) -> None:
    """Watchdog: wake a blocked read by shutting the download's socket down."""
    fired.set()
    try:
        sockets[-1].shutdown(socket.SHUT_RDWR)
    except (IndexError, OSError):
        pass


def fetch_url(url: str, *, max_bytes: int = MAX_IMAGE_BYTES, timeout: float = URL_TIMEOUT_S) -> bytes:
    """Download ``url`` (http or https) with bounded size and total time, from public addresses only.

    The host is resolved first and every address it resolves to must pass :func:`is_public_address`; the
    connection then goes to the checked address (a second DNS answer cannot redirect it), TLS is verified against
    the host name, redirects are not followed, and a watchdog ends the download ``timeout`` seconds after the call
    however slowly the server sends.

    Args:
        url: An ``http://`` or ``https://`` URL.
        max_bytes: Largest accepted body; a larger ``Content-Length`` is refused before reading.
        timeout: Seconds for the whole download, name resolution included.

    Returns:
        The response body.

    Raises:
        ValueError: For another scheme; a host that does not resolve to public addresses only (one message whether
            it is internal or unknown, so errors do not reveal which internal names exist); an answer other than
            200; a body above ``max_bytes``; a download longer than ``timeout``; a network error.
    """
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(deadline - time.monotonic(), 0.001)

    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise ValueError(f"{_describe(url)} is not a valid URL ({error}).") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_describe(url)}: only http:// and https:// URLs with a host can be fetched.")
    addresses = _resolve(parts.hostname, port, timeout)
    if not addresses or not all(is_public_address(ipaddress.ip_address(a.split("%")[0])) for a in addresses):
        raise ValueError(
            f"{_describe(url)}: the host must resolve to public internet addresses only (hosts that do not resolve "
            "and private, loopback, link-local or reserved addresses are refused)."
        )
    too_large = f"{_describe(url)} is larger than {max_bytes:,} bytes; download and downscale it yourself."
    fired = threading.Event()
    sockets: list[socket.socket] = []  # the current socket is last (the TLS one wraps the TCP one)
    connection = http.client.HTTPConnection(parts.hostname, port)
    watchdog = threading.Timer(left(), _interrupt, args=(sockets, fired))
    try:
        sockets.append(socket.create_connection((addresses[0], port), timeout=left()))
        watchdog.start()
        if parts.scheme == "https":
            context = ssl.create_default_context()
            sockets.append(
                context.wrap_socket(sockets[0], server_hostname=parts.hostname, do_handshake_on_connect=False)
            )
            sockets[-1].do_handshake()
        connection.sock = sockets[-1]
        connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        if response.status != 200:
            raise ValueError(
                f"{_describe(url)} answered HTTP {response.status} {response.reason} (redirects are not followed); "
                "give the final URL of the image."
            )
        declared = response.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ValueError(too_large)
        body = bytearray()
        while chunk := response.read1(64 * 1024):
            body += chunk
            if len(body) > max_bytes:
                raise ValueError(too_large)
        if fired.is_set():  # the watchdog's shutdown reads as an early end of the body
            raise OSError("interrupted")
        return bytes(body)
    except (OSError, http.client.HTTPException) as error:
        if fired.is_set() or time.monotonic() >= deadline:
            raise ValueError(f"{_describe(url)} took longer than {timeout:g} s to download.") from error
        raise ValueError(f"{_describe(url)} could not be fetched ({error}).") from error
    finally:
        watchdog.cancel()
        connection.close()
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class _Limits:
    allow_urls: bool
    max_image_pixels: int | None


_URL_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def _describe(value: Any) -> str:
    text = " ".join(repr(value).split())  # one line, also for arrays
    return text if len(text) <= 80 else text[:77] + "..."


def _is_array(value: Any) -> bool:
    """A ``torch.Tensor`` or a numpy-like array (sentence-transformers' ``np.ndarray | torch.Tensor``)."""
    if isinstance(value, torch.Tensor):
        return True
    return not isinstance(value, Image.Image) and hasattr(value, "__array_interface__") and hasattr(value, "ndim")


def _path_like(text: str, extensions: tuple[str, ...]) -> bool:
    """A string that reads as a file name with one of ``extensions``: no white space, or a path start such as ``/``
    or ``./`` (a sentence that merely ends in a file name is not one)."""
    path_like = not any(char.isspace() for char in text) or text.startswith(("/", "./", "../", "~"))
    return path_like and "\n" not in text and text.lower().endswith(extensions)


def _names_an_image(text: str) -> bool:
    """sentence-transformers' rule for a string that is an image (a ``data:image/`` URI, an image URL, an existing
    image file), widened to path-like strings that do not exist, so that a mistyped path is an error."""
    return is_image_url_or_path(text) or _path_like(text, IMAGE_EXTENSIONS)


def _too_large(label: str, size: str, limits: _Limits) -> str:
    return (
        f"{label} is too large to decode safely ({size}; this encoder's max_image_pixels is "
        f"{limits.max_image_pixels}, PIL's Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS}). Downscale it, or "
        "raise those limits (None turns max_image_pixels off) if you trust the source."
    )


def _load(image: Image.Image, label: str, limits: _Limits) -> Image.Image:
    """Check the size from the header, then decode and convert to RGB; decode errors become clear errors."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"{label} has no pixels ({width}x{height}).")
    if limits.max_image_pixels is not None and width * height > limits.max_image_pixels:
        raise ValueError(_too_large(label, f"{width}x{height} = {width * height:,} pixels", limits))
    try:
        image.load()
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot decode {label} ({error}): the file is truncated or corrupt, or the image was closed. "
            "Pass a complete image that is still open."
        ) from error
    try:
        return to_rgb(image)
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from error


def _decode(file: IO[bytes], label: str, limits: _Limits) -> Image.Image:
    """Open image bytes, reading only the header before the size check (see :func:`_load`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ValueError(_too_large(label, str(error).rstrip("."), limits)) from error
        except UnidentifiedImageError as error:
            raise ValueError(
                f"cannot decode {label}: it is not in an image format PIL reads (PNG, JPEG, WebP, ...)."
            ) from error
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot decode {label} ({error}).") from error
    return _load(image, label, limits)


def _decode_data_uri(uri: str) -> bytes:
    header, comma, payload = uri.partition(",")
    if not (comma and header.startswith("data:image/") and header.endswith(";base64")):
        raise ValueError(
            f"{_describe(uri)}: only base64 image data URIs (data:image/<type>;base64,<data>) are supported."
        )
    if len(payload) > 4 * (MAX_IMAGE_BYTES // 3 + 1):
        raise ValueError(f"the data URI holds more than {MAX_IMAGE_BYTES:,} bytes; downscale the image first.")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ValueError(f"the data URI is not valid base64 ({error}).") from error


def _open_reference(text: str, label: str, limits: _Limits) -> Image.Image:
    """An image named by a string: a ``data:image/`` URI, an http(s) URL (only when allowed) or a file path."""
    if text.startswith("data:"):
        return _decode(io.BytesIO(_decode_data_uri(text)), f"{label} (data URI)", limits)
    if _URL_SCHEME.match(text):
        if not limits.allow_urls:
            raise ValueError(
                f"{label} is the URL {_describe(text)}; URLs are not fetched unless the encoder option allow_urls "
                "is True (then downloads are bounded and only public hosts are reached). Download the image and "
                "pass a path, bytes or a PIL image, or set allow_urls=True (model[0].allow_urls = True)."
            )
        return _decode(io.BytesIO(fetch_url(text)), f"{label} (from {_describe(text)})", limits)
    if not os.path.isfile(text):
        raise ValueError(
            f"{label}: image file {text!r} does not exist or is not a file. Pass an existing path (to embed the "
            "string as text, pass {'text': ...})."
        )
    try:
        with open(text, "rb") as file:
            return _decode(file, f"{label} (file {text!r})", limits)  # raises only ValueError
    except OSError as error:
        raise ValueError(f"{label}: cannot read image file {text!r} ({error.strerror}).") from error


def _from_array(value: Any, label: str, limits: _Limits) -> Image.Image:
    """A 3-D array as sentence-transformers/transformers read it: channels first when the first axis has 1 or 3
    entries, else channels last (1, 3 or 4 channels); uint8, or float in [0, 1]."""
    shape = tuple(value.shape)
    if len(shape) != 3:
        raise ValueError(
            f"{label} must be a 3-D array (height, width, channels) or (channels, height, width), got shape {shape}."
        )
    channels_first = shape[0] in (1, 3) or (shape[0] == 4 and shape[-1] not in (1, 3, 4))
    if not channels_first and shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{label} has shape {shape}: neither its first nor its last axis holds 1, 3 or 4 channels. Pass "
            "(height, width, channels) or (channels, height, width)."
        )
    height, width = shape[1:] if channels_first else shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"{label} has no pixels (shape {shape}).")
    if limits.max_image_pixels is not None and height * width > limits.max_image_pixels:
        raise ValueError(_too_large(label, f"{width}x{height} = {width * height:,} pixels", limits))
    tensor = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.tensor(value)
    if channels_first:
        tensor = tensor.permute(1, 2, 0)  # (height, width, channels)
    if tensor.is_floating_point():
        tensor = tensor.float()
        if not bool(torch.isfinite(tensor).all()) or tensor.min() < 0 or tensor.max() > 1:
            raise ValueError(
                f"{label} is a float array with values outside [0, 1] (min {tensor.min():g}, max {tensor.max():g}); "
                "scale it to [0, 1] or pass uint8 values 0-255."
            )
        tensor = (tensor * 255).round().to(torch.uint8)
    elif tensor.dtype != torch.uint8:
        raise TypeError(f"{label} has dtype {tensor.dtype}; pass uint8 values 0-255 or float values in [0, 1].")
    pixels = tensor.contiguous().numpy()
    return to_rgb(Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels))


def _open_image(value: Any, limits: _Limits, label: str = "the image") -> Image.Image:
    """A decoded RGB image from a PIL image, a 3-D array, a path / URL / data URI string, or bytes."""
    if isinstance(value, Image.Image):
        return _load(value, label, limits)
    if _is_array(value):
        return _from_array(value, label, limits)
    if isinstance(value, os.PathLike):
        value = os.fsdecode(value)
    if isinstance(value, str):
        return _open_reference(value, label, limits)
    if isinstance(value, (bytes, bytearray)):
        return _decode(io.BytesIO(value), f"{label} ({len(value):,} bytes)", limits)
    raise TypeError(
        f"{label} must be a PIL.Image.Image, a 3-D numpy array or torch tensor, a file path, URL or data URI, or "
        f"bytes; got {type(value).__name__}."
    )


def _is_single_image(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray, Image.Image)) or (
        _is_array(value) and value.ndim == 3
    )


def _open_video_file(value: str | os.PathLike[str], limits: _Limits, nframes: int | None = None) -> list[Image.Image]:
    """Frames sampled from a video file by the reference's rule (2 fps, or ``nframes``); URLs are refused."""
    text = os.fsdecode(value)
    if _URL_SCHEME.match(text):
        raise ValueError(
            f"{_describe(text)} is a video URL; videos are not downloaded. Download the file and pass its path."
        )
    from .video import read_video_frames  # imported here: video.py imports this module

    return read_video_frames(text, nframes, limits.max_image_pixels)


def _open_frames(value: Any, limits: _Limits) -> list[Image.Image]:
    """Video frames from a list of images or a 4-D array; an odd count gets its last frame repeated.

    Qwen-VL cuts videos into 2-frame temporal patches: the Qwen2-VL processor repeats the last frame of an odd
    count itself, the Qwen3-VL processor refuses one frame, so the repeat happens here (same embeddings on Qwen2-VL).
    """
    if _is_single_image(value):
        raise ValueError(
            "'video' got a single image; pass it as 'image', or as a one-element list [image] for a one-frame video."
        )
    if _is_array(value):
        if value.ndim != 4:
            raise ValueError(
                "a video array must be 4-D (frames, height, width, channels) or (frames, channels, height, width), "
                f"got shape {tuple(value.shape)}."
            )
        value = list(value)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"'video' must be a list of frames or a 4-D array, got {type(value).__name__}.")
    if not value:
        raise ValueError("the video has no frames; give at least one frame.")
    frames = [_open_image(frame, limits, f"video frame {position}") for position, frame in enumerate(value)]
    sizes = sorted({frame.size for frame in frames})
    if len(sizes) > 1:
        listed = ", ".join(f"{width}x{height}" for width, height in sizes)
        raise ValueError(f"the video frames have different sizes ({listed}); resize them to one size.")
    if len(frames) % 2:
        frames.append(frames[-1])
    return frames


# ---------------------------------------------------------------------------------------------------- items
MESSAGES_SUPPORTED = (
    "Chat messages map onto one U-MARVEL item: an optional 'system' message first (its text becomes the item's "
    "instruction) and one 'user' message with at most one text part and at most one image or video part."
)


def _content_parts(content: Any, where: str) -> list[tuple[str, Any]]:
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise TypeError(f"{where}: 'content' must be a string or a list of parts, got {type(content).__name__}.")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "image", "video") or kind not in part:
            raise ValueError(
                f"{where}: content part {_describe(part)} is not supported; use {{'type': 'text', 'text': ...}}, "
                "{'type': 'image', 'image': ...} or {'type': 'video', 'video': [frames]}."
            )
        if kind == "text" and not isinstance(part["text"], str):
            raise TypeError(f"{where}: a text part must hold a string, got {type(part['text']).__name__}.")
        parts.append((kind, part[kind]))
    return parts


def _from_messages(value: Any, limits: _Limits) -> Item:
    """One item from a message dict or a conversation (see :data:`MESSAGES_SUPPORTED`)."""
    messages = [value] if isinstance(value, dict) else list(value)
    instruction: str | None = None
    user: list[tuple[str, Any]] | None = None
    for position, message in enumerate(messages):
        where = f"message {position}"
        if not is_message_dict(message):
            raise TypeError(f"{where} must be a dict with 'role' and 'content', got {_describe(message)}.")
        role = message["role"]
        parts = _content_parts(message["content"], where)
        if role == "system" and position == 0:
            if len(parts) > 1 or parts[0][0] != "text":
                raise ValueError(f"{where} (system) must hold one text. {MESSAGES_SUPPORTED}")
            instruction = parts[0][1] or None
        elif role == "user" and user is None:
            user = parts
        else:
            raise ValueError(f"{where} (role {role!r}) cannot be mapped. {MESSAGES_SUPPORTED}")
    if user is None:
        raise ValueError(f"the conversation has no 'user' message. {MESSAGES_SUPPORTED}")
    texts = [part for kind, part in user if kind == "text"]
    visuals = [(kind, part) for kind, part in user if kind != "text"]
    if len(texts) > 1 or len(visuals) > 1:
        raise ValueError(
            f"the user message has {len(texts)} text and {len(visuals)} image/video parts. {MESSAGES_SUPPORTED}"
        )
    kind, visual = visuals[0] if visuals else (None, None)
    from_file = kind == "video" and isinstance(visual, (str, os.PathLike))
    return Item(
        text=texts[0] if texts else "",
        image=_open_image(visual, limits) if kind == "image" else None,
        video=(_open_video_file(visual, limits) if from_file else _open_frames(visual, limits))
        if kind == "video"
        else None,
        instruction=instruction,
        video_sized=from_file,
    )


def _from_dict(value: dict[str, Any], limits: _Limits) -> Item:
    unknown = set(value) - ITEM_KEYS
    if unknown:
        raise ValueError(
            f"unknown keys {sorted(unknown)}; an item dict may have {sorted(ITEM_KEYS)} (or be a chat message "
            "with 'role' and 'content', or a verbatim item with only 'content')."
        )
    text = value.get("text")
    if text is not None and not isinstance(text, str):
        raise TypeError(f"'text' must be a string or None, got {type(text).__name__}.")
    instruction = value.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise TypeError(f"'instruction' must be a string or None, got {type(instruction).__name__}.")
    image = value.get("image")
    video = value.get("video")
    if image is not None and video is not None:
        raise ValueError("give either 'image' or 'video', not both.")
    if image is not None and not _is_single_image(image) and (isinstance(image, (list, tuple)) or _is_array(image)):
        raise ValueError("'image' must be one image; pass video frames as 'video'.")
    from_file = isinstance(video, (str, os.PathLike))
    return Item(
        text=text or "",
        image=None if image is None else _open_image(image, limits),
        video=None if video is None else _open_video_file(video, limits) if from_file else _open_frames(video, limits),
        instruction=instruction,
        video_sized=from_file,
    )


CONTENT_SUPPORTED = (
    "A verbatim item is {'content': [parts]} with parts {'type': 'text', 'text': str}, {'type': 'image', "
    "'image': image}, {'type': 'video', 'video': frames or a video file path (optionally 'nframes': int)} and at "
    "most one {'type': 'instruction', 'text': str}."
)


def is_content_item(value: Any) -> bool:
    """Whether ``value`` is a verbatim ``{"content": [parts]}`` item (a dict with ``content`` and no ``role``)."""
    return isinstance(value, dict) and "content" in value and "role" not in value


def _content_part(part: Any, position: int, limits: _Limits, prepare: Callable[[Image.Image], Image.Image]) -> Part:
    where = f"content part {position} {_describe(part)}"
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in CONTENT_PART_KEYS:
        raise ValueError(f"{where} has no supported 'type'. {CONTENT_SUPPORTED}")
    unknown = set(part) - CONTENT_PART_KEYS[kind]
    key = "text" if kind in ("text", "instruction") else kind
    if unknown or key not in part:
        raise ValueError(
            f"{where}: a {kind!r} part has the keys {sorted(CONTENT_PART_KEYS[kind])}. {CONTENT_SUPPORTED}"
        )
    value = part[key]
    try:
        if kind in ("text", "instruction"):
            if not isinstance(value, str):
                raise TypeError(f"its {key!r} must be a string, got {type(value).__name__}.")
            if kind == "instruction" and not value:
                raise ValueError("the instruction is empty; drop the part instead.")
            return Part(kind, value)
        if kind == "image":
            return Part(kind, prepare(_open_image(value, limits)))
        nframes = part.get("nframes")
        from_file = isinstance(value, (str, os.PathLike))
        if nframes is not None and (not from_file or isinstance(nframes, bool) or not isinstance(nframes, int)):
            raise ValueError(f"'nframes' must be a positive int and needs a video file path, got {nframes!r}.")
        if nframes is not None and nframes <= 0:
            raise ValueError(f"'nframes' must be a positive int, got {nframes}.")
        if from_file:
            return Part(kind, _open_video_file(value, limits, nframes), sized=True)
        return Part(kind, [prepare(frame) for frame in _open_frames(value, limits)])
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from error


def normalize_content(
    value: Any,
    *,
    allow_urls: bool = False,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    prepare: Callable[[Image.Image], Image.Image] = lambda image: image,
) -> Content:
    """Normalise a verbatim ``{"content": [parts]}`` item (see :data:`CONTENT_SUPPORTED`) into a :class:`Content`.

    Images and videos are decoded and checked as in :func:`normalize_item`; texts are kept exactly as given.
    ``prepare`` (e.g. the encoder's pre-resize) runs on each image and frame as soon as its part is decoded, so an
    item with many large images holds one of them at full size at a time; frames from a video file keep the
    video rule's size.

    Raises:
        TypeError: If ``content`` is not a list, or a part's text is not a string.
        ValueError: For extra keys, an unsupported part (naming its position), two instructions, or nothing to
            embed; the message quotes the item.
    """
    limits = _Limits(allow_urls, max_image_pixels)
    try:
        if not is_content_item(value) or set(value) != {"content"}:
            raise ValueError(f"a verbatim item is a dict with only the key 'content'. {CONTENT_SUPPORTED}")
        parts = value["content"]
        if not isinstance(parts, list):
            raise TypeError(f"'content' must be a list of parts, got {type(parts).__name__}. {CONTENT_SUPPORTED}")
        content = Content([_content_part(part, position, limits, prepare) for position, part in enumerate(parts)])
        if sum(part.kind == "instruction" for part in content.parts) > 1:
            raise ValueError("it has more than one instruction part; join them into one.")
        if not any(part.kind in ("image", "video") or (part.kind == "text" and part.value) for part in content.parts):
            raise ValueError("nothing to embed (no image, video or non-empty text part).")
    except (TypeError, ValueError) as error:
        raise type(error)(f"Item {_describe(value)}: {error}") from error
    return content


def _normalize(value: Any, limits: _Limits) -> Item:
    if isinstance(value, str):
        if is_video_url_or_path(value) or _path_like(value, VIDEO_EXTENSIONS):
            return Item(video=_open_video_file(value, limits), video_sized=True)
        if _names_an_image(value):
            return Item(image=_open_image(value, limits))
        return Item(text=value)
    if isinstance(value, Image.Image):
        return Item(image=_open_image(value, limits))
    if _is_array(value):
        if value.ndim not in (3, 4):
            raise ValueError(
                f"an array item must be 3-D (an image) or 4-D (video frames), got shape {tuple(value.shape)}."
            )
        return Item(image=_open_image(value, limits)) if value.ndim == 3 else Item(video=_open_frames(value, limits))
    if is_message_dict(value) or (isinstance(value, (list, tuple)) and value and is_message_dict(value[0])):
        return _from_messages(value, limits)
    if isinstance(value, (list, tuple)) and value and all(_is_frame(frame) for frame in value):
        return Item(video=_open_frames(value, limits))
    if isinstance(value, dict):
        return _from_dict(value, limits)
    raise TypeError(
        f"unsupported input {_describe(value)} of type {type(value).__name__}. Pass a str (text, or an image path, "
        "URL or data URI, or a video file path), a PIL.Image.Image or 3-D array (image), a list of frames or a 4-D "
        "array (video), a dict with 'text' / 'image' / 'video' / 'instruction', a verbatim {'content': [parts]} "
        "item, or chat messages."
    )


def _is_frame(value: Any) -> bool:
    return (
        isinstance(value, Image.Image)
        or (_is_array(value) and value.ndim == 3)
        or (isinstance(value, str) and _names_an_image(value))
    )


def normalize_item(value: Any, *, allow_urls: bool = False, max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Item:
    """Normalise one user input into an :class:`Item`, with images decoded, checked and converted to RGB.

    Accepted, following sentence-transformers' conventions:

    * ``str``: text; but a string that names an image (``data:image/...;base64,`` URI, ``http(s)://`` URL or file
      path ending in an image extension of sentence-transformers' list) is an image, and one that names a video
      file (``.mp4``, ``.avi``, ...) is a video, decoded and sampled as the reference (2 fps, 4 to 768 frames, an
      even count, see :func:`.video.read_video_frames`; video URLs are refused). A path that does not exist is an
      error, never text (pass ``{"text": ...}`` for such text); a sentence with spaces that merely ends in a file
      name stays text.
    * ``PIL.Image.Image`` or a 3-D ``numpy.ndarray`` / ``torch.Tensor`` (HWC or CHW; uint8, or float in [0, 1]).
    * Video frames: a list of images or a 4-D array (an odd frame count gets its last frame repeated).
    * A dict with keys among ``text``, ``image`` (any image form above; a string is always an image reference
      here), ``video`` (frames, or a video file path) and ``instruction``.
    * Chat messages (one message dict or a conversation, see :data:`MESSAGES_SUPPORTED`).

    Images are refused before decoding when their header declares more than ``max_image_pixels`` pixels, and URLs
    are fetched (bounded, public hosts only, see :func:`fetch_url`) only with ``allow_urls``.

    Args:
        value: The user's item. Errors quote it (``Item <repr>: ...``): sentence-transformers sorts a batch by
            length before preprocessing, so a position would not be the user's.
        allow_urls: Fetch ``http(s)://`` image URLs instead of refusing them.
        max_image_pixels: Largest image accepted (width x height); ``None`` turns this check off.

    Raises:
        TypeError: For an unsupported type, quoting what was received.
        ValueError: For an empty item, unknown keys, an image that cannot be used, or messages that cannot map.
    """
    try:
        item = _normalize(value, _Limits(allow_urls, max_image_pixels))
    except (TypeError, ValueError) as error:
        kind = ValueError if isinstance(error, ValueError) else TypeError
        raise kind(f"Item {_describe(value)}: {error}") from error
    if not item.has_visual and not item.text.strip():
        raise ValueError(
            f"Item {_describe(value)}: nothing to embed (no image and empty text {_describe(item.text)}). "
            "Give some text or an image."
        )
    return item
