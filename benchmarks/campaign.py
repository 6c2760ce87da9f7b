"""Fault and bad-input campaign: every surface a user meets, fed hostile but realistic input (issue 8, re-run).

About 350 small cases over ``encode`` / ``encode_query`` / ``encode_document`` inputs, ``from_mllm`` / ``load``
options, save / load / re-save (also by plain sentence-transformers), the Inference Endpoints handler,
``umarvel eval mbeir`` / ``train`` / ``publish`` / ``convert`` / ``demo`` / ``make-synthetic``. Each case states
what a correct package does (embed, or refuse with a clear ``ValueError`` / ``TypeError``) and is classified as ok,
unclear (raw exception), crash (a documented option fails), silent (a wrong result or ignored input), security,
resource (over 30 s; a 60 s alarm stops it) or upstream (sentence-transformers' or the Hub's own behaviour). Tiny
offline models only, no network (URL cases are refused before any connection or target loopback). Runs in about a
minute on 2 CPU cores. Not a test: the regression tests for what it found are in ``tests/``.

Example:
    PYTHONPATH=$PWD python benchmarks/campaign.py --output benchmarks/results/campaign.md
    PYTHONPATH=$PWD python benchmarks/campaign.py handler: "eval:cache"   # a subset
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import umarvel_st  # noqa: E402
from umarvel_st.cli import main as cli  # noqa: E402
from umarvel_st.testing import make_test_image  # noqa: E402

logging.disable(logging.WARNING)  # expected warnings (e.g. qrels positives outside a pool) would flood the table
warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "umarvel_st/assets/tiny-umarvel-qwen2vl"
DEMO = REPO / "umarvel_st/assets/umarvel-demo"
W = Path(tempfile.mkdtemp(prefix="campaign-"))
COUNTER = itertools.count()
EVAL_FLAGS = ("--no-progress-bar", "--device", "cpu")
CASES = []
RAW = (
    "Traceback",
    "KeyError",
    "IndexError",
    "AttributeError",
    "not subscriptable",
    "object has no attribute",
    "unsupported operand",
    "list index",
    "expected str, bytes",
    "invalid literal",
    "size mismatch",
)


def case(group, name, expect="error", check=None):
    """Register ``fn`` as a case: ``expect`` is "error" (a clear refusal), "ok" (works; ``check(result)`` returns
    what is wrong, or None) or "upstream" (recorded as is)."""

    def deco(fn):
        CASES.append((group, name, expect, check, fn))
        return fn

    return deco


class Timeout(Exception):
    pass


def _alarm(*_):
    raise Timeout()


def _try(fn):
    """Run ``fn`` for its side effects, whatever it raises."""
    try:
        fn()
    except BaseException:  # noqa
        pass


def run_cli(*argv):
    """``umarvel *argv`` in-process; its output, or SystemExit with the last error line for a non-zero exit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
    if rc not in (0, None):
        raise SystemExit(
            f"rc={rc}: {err.getvalue().strip().splitlines()[-1:] if err.getvalue().strip() else out.getvalue()[-300:]}"
        )
    return out.getvalue() + err.getvalue()


def classify(expect, check, fn):
    """``(class, detail)`` of one case, bounded by a 60 s alarm."""
    t = time.time()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    if expect == "upstream":
        try:
            return "upstream", f"no error; got {str(fn())[:80]!r}"
        except BaseException as error:  # noqa
            return "upstream", f"{type(error).__name__}: {error}"[:200]
        finally:
            signal.alarm(0)
    try:
        result = fn()
        signal.alarm(0)
        dt = time.time() - t
        if dt > 30:
            return "resource", f"took {dt:.0f}s"
        if expect == "error":
            return "silent", f"no error; got {str(result)[:120]!r}"
        if check is not None:
            bad = check(result)
            if bad:
                return "silent", bad
        return "ok", ""
    except Timeout:
        return "resource", "over 60s"
    except BaseException as error:  # noqa
        signal.alarm(0)
        msg = f"{type(error).__name__}: {error}"
        one = " ".join(msg.split())[:240]
        if isinstance(error, MemoryError):
            return "resource", one
        if expect == "ok":
            return "crash", one + " @ " + traceback.extract_tb(error.__traceback__)[-1].filename.split("/")[
                -1
            ] + ":" + str(traceback.extract_tb(error.__traceback__)[-1].lineno)
        if isinstance(error, SystemExit):
            if "usage" in str(error) or "error:" in str(error) or "rc=2" in str(error):
                return "ok", one
        if not isinstance(
            error, (ValueError, TypeError, SystemExit, FileNotFoundError, FileExistsError, NotADirectoryError)
        ) or any(r in msg for r in RAW):
            tb = traceback.extract_tb(error.__traceback__)[-1]
            return "unclear", one + f" @ {tb.filename.split('/')[-1]}:{tb.lineno}"
        return "ok", one


# ------------------------------------------------------------------ fixtures
_model = None


def model():
    global _model
    if _model is None:
        _model = umarvel_st.from_mllm(str(TINY), device="cpu")
    return _model


def enc(items, **kw):
    return model().encode(items, show_progress_bar=False, **kw)


def png_bytes(w=32, h=32, mode="RGB"):
    buf = io.BytesIO()
    make_test_image(w, h, mode=mode).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side=12000):
    img = Image.new("1", (side, side))
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


IMG = W / "img.png"
make_test_image(32, 32).save(IMG)
BOMB = W / "bomb.png"
BOMB.write_bytes(bomb_png())
TRUNC = W / "trunc.png"
TRUNC.write_bytes(IMG.read_bytes()[:200])
NOTIMG = W / "notimg.png"
NOTIMG.write_text("hello")
I16 = W / "i16.png"
Image.fromarray((np.ones((32, 32)) * 3000).astype(np.uint16)).save(I16)
DATAURI = "data:image/png;base64," + base64.b64encode(IMG.read_bytes()).decode()


def unit(embeddings):
    """None when every row is a finite unit vector, else what is wrong."""
    rows = np.asarray(embeddings)
    return None if np.isfinite(rows).all() and np.allclose(np.linalg.norm(rows, axis=-1), 1, atol=1e-3) else "not unit"


# ------------------------------------------------------------------ encode inputs
E = "encode"
case(E, "plain text", "ok", unit)(lambda: enc(["a dog"]))
case(E, "empty list", "ok", lambda r: None if len(r) == 0 else "nonempty")(lambda: enc([]))
case(E, "empty string")(lambda: enc([""]))
case(E, "whitespace string")(lambda: enc(["   \n\t"]))
case(E, "None item")(lambda: enc([None]))
case(E, "int item")(lambda: enc([3]))
case(E, "float item")(lambda: enc([1.5]))
case(E, "bytes item (png) top-level (use {'image': bytes})")(lambda: enc([IMG.read_bytes()]))
case(E, "bytes garbage")(lambda: enc([b"xxxx"]))
case(E, "set item")(lambda: enc([{"a"}]))
case(E, "nested list of str")(lambda: enc([["a", "b"]]))
case(E, "dict unknown key")(lambda: enc([{"txt": "a"}]))
case(E, "dict empty")(lambda: enc([{}]))
case(E, "dict text None image None")(lambda: enc([{"text": None, "image": None}]))
case(E, "dict text int")(lambda: enc([{"text": 5}]))
case(E, "dict instruction int")(lambda: enc([{"text": "a", "instruction": 5}]))
case(E, "dict image int")(lambda: enc([{"image": 5}]))
case(E, "dict image list")(lambda: enc([{"image": [make_test_image(8, 8)]}]))
case(E, "dict image+video")(lambda: enc([{"image": make_test_image(32, 32), "video": [make_test_image(32, 32)] * 2}]))
case(E, "dict image str text-like")(lambda: enc([{"image": "a dog"}]))
case(E, "PIL RGB", "ok", unit)(lambda: enc([make_test_image(32, 32)]))
for mode in ("L", "RGBA", "P", "1", "CMYK", "LA", "I", "F", "I;16", "YCbCr", "HSV", "LAB", "PA", "RGBX"):

    def _mk(mode=mode):
        base = make_test_image(32, 32)
        img = (
            base.convert(mode)
            if mode not in ("I;16",)
            else Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
        )
        return enc([img])

    case(E, f"PIL mode {mode}", "ok", unit)(_mk)
case(
    E,
    "I;16 photo not clipped white",
    "ok",
    lambda r: None if float(np.dot(r[0], r[1])) < 0.9999 else "I;16 image embeds as white",
)(lambda: enc([Image.open(I16), Image.new("RGB", (32, 32), "white")]))
case(E, "PIL 1x1", "ok", unit)(lambda: enc([make_test_image(1, 1)]))
case(E, "PIL 1x5000 (aspect)")(lambda: enc([Image.new("RGB", (1, 5000))]))
case(E, "PIL 0x0")(lambda: enc([Image.new("RGB", (0, 0))]))
case(E, "PIL 12000x12000 lazily opened from bomb")(lambda: enc([Image.open(BOMB)]))
case(E, "path to bomb")(lambda: enc([str(BOMB)]))
case(E, "bytes of bomb")(lambda: enc([BOMB.read_bytes()]))
case(E, "closed image")(lambda: (lambda im: (im.close(), enc([im])))(Image.open(IMG)))
case(E, "truncated file lazily")(lambda: enc([Image.open(TRUNC)]))
case(E, "path truncated")(lambda: enc([str(TRUNC)]))
case(E, "path not an image")(lambda: enc([str(NOTIMG)]))
case(E, "path missing .png")(lambda: enc([str(W / "missing.png")]))
case(E, "path directory named x.png")(lambda: (os.makedirs(W / "dir.png", exist_ok=True), enc([str(W / "dir.png")])))
case(
    E,
    "path str existing",
    "ok",
    lambda r: None if np.allclose(r[0], enc([make_test_image(32, 32)])[0], atol=1e-5) else "path != PIL",
)(lambda: enc([str(IMG)]))
case(E, "pathlib.Path top-level (ST: str only)")(lambda: enc([IMG]))
case(E, "sentence ending in file name stays text", "ok", unit)(lambda: enc(["look at photo.png"]))
case(E, "http URL refused")(lambda: enc(["http://127.0.0.1:1/x.png"]))
case(E, "ftp URL")(lambda: enc(["ftp://example.com/x.png"]))
case(E, "file:// URL")(lambda: enc([f"file://{IMG}"]))
case(E, "data URI ok", "ok", unit)(lambda: enc([DATAURI]))
case(E, "data URI bad base64")(lambda: enc(["data:image/png;base64,@@@"]))
case(E, "data URI not base64")(lambda: enc(["data:image/png,abc"]))
case(E, "data URI svg")(lambda: enc(["data:image/svg+xml;base64,PHN2Zz4="]))
case(E, "video path string")(lambda: enc(["clip.mp4"]))
case(E, "numpy HWC uint8", "ok", unit)(lambda: enc([np.zeros((32, 32, 3), np.uint8)]))
case(E, "numpy CHW float", "ok", unit)(lambda: enc([np.zeros((3, 32, 32), np.float32)]))
case(E, "numpy float >1")(lambda: enc([np.full((32, 32, 3), 255.0, np.float32)]))
case(E, "numpy float NaN")(lambda: enc([np.full((32, 32, 3), np.nan, np.float32)]))
case(E, "numpy int64")(lambda: enc([np.zeros((32, 32, 3), np.int64)]))
case(E, "numpy 2-D")(lambda: enc([np.zeros((32, 32), np.uint8)]))
case(E, "numpy 5 channels")(lambda: enc([np.zeros((32, 32, 5), np.uint8)]))
case(E, "numpy 0-d")(lambda: enc([np.array(3)]))
case(E, "numpy bool")(lambda: enc([np.zeros((32, 32, 3), bool)]))
case(E, "numpy huge declared")(
    lambda: enc([np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (20000, 20000, 3), (0, 0, 0))])
)
case(E, "torch CHW uint8", "ok", unit)(lambda: enc([torch.zeros(3, 32, 32, dtype=torch.uint8)]))
case(E, "torch requires_grad float", "ok", unit)(lambda: enc([torch.rand(3, 32, 32, requires_grad=True)]))
case(E, "torch float16", "ok", unit)(lambda: enc([torch.rand(3, 32, 32).half()]))
case(E, "video 2 frames", "ok", unit)(lambda: enc([{"video": [make_test_image(32, 32)] * 2}]))
case(E, "video 1 frame", "ok", unit)(lambda: enc([{"video": [make_test_image(32, 32)]}]))
case(E, "video 3 frames", "ok", unit)(lambda: enc([{"video": [make_test_image(32, 32)] * 3}]))
case(E, "video empty")(lambda: enc([{"video": []}]))
case(E, "video mixed sizes")(lambda: enc([{"video": [make_test_image(32, 32), make_test_image(64, 32)]}]))
case(E, "video single image")(lambda: enc([{"video": make_test_image(32, 32)}]))
case(E, "video 4-D array", "ok", unit)(lambda: enc([np.zeros((2, 32, 32, 3), np.uint8)]))
case(E, "video 5-D array")(lambda: enc([{"video": np.zeros((1, 2, 32, 32, 3), np.uint8)}]))
case(E, "video frames int")(lambda: enc([{"video": [1, 2]}]))
case(E, "video 1000 frames")(lambda: enc([{"video": [make_test_image(32, 32)] * 1000}]))
case(E, "video str")(lambda: enc([{"video": "x.mp4"}]))
case(E, "messages user text+image", "ok", unit)(
    lambda: enc(
        [
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "image", "image": make_test_image(32, 32)}],
                }
            ]
        ]
    )
)
case(E, "messages system + user", "ok", unit)(
    lambda: enc([[{"role": "system", "content": "Find"}, {"role": "user", "content": "a dog"}]])
)
case(E, "messages assistant")(lambda: enc([[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]]))
case(E, "messages no user")(lambda: enc([[{"role": "system", "content": "a"}]]))
case(E, "messages content int")(lambda: enc([[{"role": "user", "content": 5}]]))
case(E, "messages part unknown type")(lambda: enc([[{"role": "user", "content": [{"type": "audio", "audio": b""}]}]]))
case(E, "messages part not dict")(lambda: enc([[{"role": "user", "content": ["a"]}]]))
case(E, "messages two images")(
    lambda: enc([[{"role": "user", "content": [{"type": "image", "image": make_test_image(8, 8)}] * 2}]])
)
case(E, "messages role None")(lambda: enc([[{"role": None, "content": "a"}]]))
case(E, "messages second not dict")(lambda: enc([[{"role": "user", "content": "a"}, "x"]]))
case(E, "messages image part str path", "ok", unit)(
    lambda: enc([[{"role": "user", "content": [{"type": "image", "image": str(IMG)}]}]])
)
case(E, "huge text 200k chars bounded", "ok", unit)(lambda: enc(["word " * 40000]))
case(E, "one 2M-char token", "ok", unit)(lambda: enc(["x" * 2_000_000]))
case(E, "lone surrogate")(lambda: enc(["a\ud800b"]))
case(E, "NUL chars", "ok", unit)(lambda: enc(["a\x00b"]))
case(
    E,
    "control token instruction_start in text",
    "ok",
    lambda r: None if not np.allclose(r[0], r[1]) else "token parsed",
)(lambda: enc(["<instruction_start>x<instruction_end> a dog", "a dog"]))
case(E, "image_pad token in text", "ok", unit)(lambda: enc(["<|image_pad|> <|video_pad|> <|vision_start|>"]))
case(E, "emb token in text", "ok", unit)(lambda: enc(["<emb> <|im_end|> <|endoftext|>"]))
case(
    E,
    "neighbour independence",
    "ok",
    lambda r: None if np.allclose(r[0], enc(["a dog"])[0], atol=1e-5) else "depends on neighbours",
)(lambda: enc(["a dog", "x " * 500, make_test_image(64, 64)]))
case(E, "encode_query prompt non-str")(lambda: model().encode_query(["a"], prompt=5, show_progress_bar=False))
case(E, "encode_query unknown prompt_name")(
    lambda: model().encode_query(["a"], prompt_name="nope", show_progress_bar=False)
)
case(E, "encode_query prompt_name ok", "ok", unit)(
    lambda: model().encode_query(["a"], prompt_name="mscoco_task0", show_progress_bar=False)
)
case(E, "encode_query prompt + instruction in item", "ok", unit)(
    lambda: model().encode_query([{"text": "a", "instruction": "x"}], prompt="y", show_progress_bar=False)
)
case(E, "encode_query empty prompt", "ok", unit)(
    lambda: model().encode_query(["a"], prompt="", show_progress_bar=False)
)
case(E, "encode_document", "ok", unit)(
    lambda: model().encode_document(["a", make_test_image(32, 32)], show_progress_bar=False)
)
case(E, "single str (not list)", "ok", lambda r: None if np.asarray(r).ndim == 1 else "not 1-D")(lambda: enc("a dog"))
case(E, "single dict", "ok", lambda r: None if np.asarray(r).ndim == 1 else "not 1-D")(lambda: enc({"text": "a"}))
case(E, "tuple of items", "ok", unit)(lambda: enc(("a", "b")))
case(E, "generator of items")(lambda: enc(x for x in ["a", "b"]))
case(E, "batch_size 0")(lambda: enc(["a"], batch_size=0))
case(E, "batch_size -1")(lambda: enc(["a"], batch_size=-1))
case(
    E,
    "token_embeddings no pad rows",
    "ok",
    lambda r: (
        None if r[0].shape[0] < r[1].shape[0] and np.isfinite(r[0].numpy()).all() else f"shapes {[x.shape for x in r]}"
    ),
)(lambda: enc(["a", "a much longer text with many many words in it"], output_value="token_embeddings"))
case(E, "output_value bogus", "upstream")(lambda: enc(["a"], output_value="bogus"))
case(E, "precision int8", "ok")(lambda: enc(["a", "b", "c"], precision="int8"))
case(E, "normalize + convert_to_tensor", "ok")(lambda: enc(["a"], convert_to_tensor=True, normalize_embeddings=True))
case(E, "truncate_dim 8", "ok", lambda r: None if r.shape[-1] == 8 else str(r.shape))(
    lambda: enc(["a"], truncate_dim=8)
)
case(E, "truncate_dim 0", "upstream")(lambda: enc(["a"], truncate_dim=0))
case(
    E,
    "max_image_pixels lowered",
)(lambda: (setattr(model()[0], "max_image_pixels", 100), enc([make_test_image(32, 32)]))[1])
case(E, "restore max_image_pixels", "ok")(lambda: setattr(model()[0], "max_image_pixels", 64_000_000))
case(E, "allow_urls loopback refused")(
    lambda: (setattr(model()[0], "allow_urls", True), enc(["http://127.0.0.1:9/x.png"]))[1]
)
case(E, "allow_urls private 10.x refused")(lambda: enc(["http://10.0.0.1/x.png"]))
case(E, "allow_urls metadata 169.254 refused")(lambda: enc(["http://169.254.169.254/latest.png"]))
case(E, "allow_urls localhost name")(lambda: enc(["http://localhost:9/x.png"]))
case(E, "allow_urls ipv6 loopback")(lambda: enc(["http://[::1]:9/x.png"]))
case(E, "allow_urls decimal ip")(lambda: enc(["http://2130706433/x.png"]))
case(E, "allow_urls off again", "ok")(lambda: setattr(model()[0], "allow_urls", False))
case(E, "set max_seq_length 0")(lambda: (setattr(model()[0], "max_seq_length", 0), enc(["a"]))[1])
case(E, "restore max_seq_length", "ok")(lambda: setattr(model()[0], "max_seq_length", 1024))

# ------------------------------------------------------------------ build / load
B = "build"


def fm(**options):
    return umarvel_st.from_mllm(str(TINY), device="cpu", **options)


case(B, "from_mllm missing folder")(lambda: umarvel_st.from_mllm(str(W / "nope")))
case(B, "from_mllm not a Qwen-VL")(lambda: umarvel_st.from_mllm(str(DEMO / "1_InstructionMaskedMeanPooling")))
case(B, "from_mllm unknown option")(lambda: fm(bogus=1))
case(B, "summarize_suffix 'false'")(lambda: fm(summarize_suffix="false"))
case(B, "max_pixels -1")(lambda: fm(max_pixels=-1))
case(B, "max_pixels str")(lambda: fm(max_pixels="300"))
case(B, "min_pixels > max_pixels")(lambda: fm(min_pixels=10**6, max_pixels=1000))
case(B, "position_mode bogus")(lambda: fm(position_mode="bogus"))
case(B, "position_mode mrope", "ok", lambda m: unit(m.encode(["a", make_test_image(32, 32)])))(
    lambda: fm(position_mode="mrope")
)
case(B, "image_backend bogus")(lambda: fm(image_backend="bogus"))
case(B, "max_seq_length 0")(lambda: fm(max_seq_length=0))
case(B, "max_seq_length 10 (template does not fit)")(lambda: fm(max_seq_length=10).encode(["word " * 100]))
case(B, "max_image_pixels 0")(lambda: fm(max_image_pixels=0))
case(
    B,
    "torch_dtype bfloat16 honoured",
    "ok",
    lambda m: None if m[0].model.dtype == torch.bfloat16 else str(m[0].model.dtype),
)(lambda: fm(model_kwargs={"torch_dtype": "bfloat16"}))
case(
    B, "dtype float16 honoured", "ok", lambda m: None if m[0].model.dtype == torch.float16 else str(m[0].model.dtype)
)(lambda: fm(model_kwargs={"dtype": "float16"}))
case(B, "dtype bogus")(lambda: fm(model_kwargs={"dtype": "float17"}))
case(B, "model_kwargs not dict")(lambda: fm(model_kwargs="x"))
case(B, "model_kwargs trust_remote_code")(lambda: fm(model_kwargs={"trust_remote_code": True, "bogus_kw": 1}))
case(B, "prompts not dict")(lambda: fm(prompts=["a"]))
case(B, "prompts value int")(lambda: fm(prompts={"a": 5}))
case(B, "device bogus")(lambda: fm(device="tpu9"))
case(B, "from_mllm on a folder without config.json")(lambda: umarvel_st.from_mllm(str(_data())))
case(B, "load missing")(lambda: umarvel_st.load(str(W / "nope")))
case(B, "load Qwen folder (no modules.json)")(lambda: umarvel_st.load(str(TINY)))
case(B, "load demo", "ok", lambda m: unit(m.encode(["a"])))(lambda: umarvel_st.load(str(DEMO), device="cpu"))


def _evil_folder():
    d = W / "evil"
    shutil.copytree(DEMO, d, dirs_exist_ok=True)
    mods = json.loads((d / "modules.json").read_text())
    mods[0]["type"] = "evil.Evil"
    (d / "modules.json").write_text(json.dumps(mods))
    (d / "evil.py").write_text(
        "import pathlib; pathlib.Path({!r}).write_text('pwned')\nclass Evil: pass\n".format(str(W / "PWNED"))
    )
    return d


case(B, "load refuses folder code", "error", None)(lambda: umarvel_st.load(str(_evil_folder())))
case(B, "load did not run folder code", "ok", lambda r: "code ran" if (W / "PWNED").exists() else None)(lambda: None)


def _save_roundtrip(by_st=False, resave=False):
    m = fm(summarize_suffix=False, max_pixels=200 * 28 * 28)
    d = W / f"saved-{by_st}-{resave}"
    m.save(str(d))
    from sentence_transformers import SentenceTransformer

    m2 = (
        SentenceTransformer(str(d), trust_remote_code=True, device="cpu")
        if by_st
        else umarvel_st.load(str(d), device="cpu")
    )
    if resave:
        d2 = Path(str(d) + "-re")
        m2.save(str(d2))
        m2 = umarvel_st.load(str(d2), device="cpu")
    items = ["a dog", make_test_image(32, 32)]
    a, b = m.encode(items), m2.encode(items)
    if not np.allclose(a, b, atol=1e-5):
        return "embeddings differ after reload"
    if m2[0].summarize_suffix is not False or m2[0].max_pixels != 200 * 28 * 28:
        return "options lost"
    return None


case(B, "save/load", "ok", lambda r: r)(lambda: _save_roundtrip())
case(B, "save/ST load", "ok", lambda r: r)(lambda: _save_roundtrip(by_st=True))
case(B, "ST load/resave/load", "ok", lambda r: r)(lambda: _save_roundtrip(by_st=True, resave=True))
case(B, "save into a file path")(
    lambda: (IMG.with_suffix(".f").write_text("x"), model().save(str(IMG.with_suffix(".f"))))
)
case(B, "load with corrupt sentence_bert_config", "error")(
    lambda: (
        shutil.copytree(DEMO, W / "corrupt", dirs_exist_ok=True),
        (W / "corrupt/sentence_bert_config.json").write_text("{"),
        umarvel_st.load(str(W / "corrupt")),
    )[2]
)
case(B, "load with bad option in config", "error")(
    lambda: (
        shutil.copytree(DEMO, W / "badopt", dirs_exist_ok=True),
        (W / "badopt/sentence_bert_config.json").write_text(
            json.dumps({**json.loads((DEMO / "sentence_bert_config.json").read_text()), "max_pixels": "lots"})
        ),
        umarvel_st.load(str(W / "badopt")),
    )[2]
)

# ------------------------------------------------------------------ handler
H = "handler"
_h = None


def handler():
    global _h
    if _h is None:
        from umarvel_st.hub.handler import EndpointHandler

        _h = EndpointHandler(str(DEMO))
    return _h


b64 = base64.b64encode(png_bytes()).decode()


def hcall(body):
    return handler()(body)


case(H, "ok text+image", "ok", lambda r: unit(r["embeddings"]))(
    lambda: hcall(
        {"inputs": ["a", {"image": b64}, {"text": "r", "image": "data:image/png;base64," + b64}], "instruction": "x"}
    )
)
for label, body in [
    ("body list", ["a"]),
    ("body str", "a"),
    ("body None", None),
    ("no inputs", {"x": 1}),
    ("inputs empty", {"inputs": []}),
    ("inputs int", {"inputs": 5}),
    ("inputs 65 items", {"inputs": ["a"] * 65}),
    ("item int", {"inputs": [5]}),
    ("item null", {"inputs": [None]}),
    ("item unknown key", {"inputs": [{"txt": "a"}]}),
    ("image int", {"inputs": [{"image": 5}]}),
    ("image bad base64", {"inputs": ["a", {"image": "!!!"}]}),
    ("image not image", {"inputs": [{"image": base64.b64encode(b"hello").decode()}]}),
    ("image bomb", {"inputs": [{"image": base64.b64encode(bomb_png()).decode()}]}),
    ("image URL refused", {"inputs": [{"image": "http://127.0.0.1:1/x.png"}]}),
    ("image URL https", {"inputs": [{"image": "https://example.com/x.png"}]}),
    ("image file path", {"inputs": [{"image": str(IMG)}]}),
    ("text as path string", {"inputs": [str(IMG)]}),
    ("text as file url", {"inputs": [f"file://{IMG}"]}),
    ("image huge base64", {"inputs": [{"image": "A" * (30 * 1024 * 1024)}]}),
    ("batch_size 0", {"inputs": ["a"], "batch_size": 0}),
    ("batch_size str", {"inputs": ["a"], "batch_size": "8"}),
    ("batch_size 1e9", {"inputs": ["a"], "batch_size": 10**9}),
    ("instruction int", {"inputs": ["a"], "instruction": 5}),
    ("text int", {"inputs": [{"text": 5}]}),
    ("empty text", {"inputs": [""]}),
    ("data uri svg", {"inputs": [{"image": "data:image/svg+xml;base64,PHN2Zz4="}]}),
    ("image empty string", {"inputs": [{"image": ""}]}),
    ("text is data uri string", {"inputs": ["data:image/png;base64,!!"]}),
    ("extra key", {"inputs": ["a"], "parameters": {}}),
    ("text path-like missing", {"inputs": ["/etc/passwd.png"]}),
    ("text huge 1M chars", {"inputs": ["x " * 500000]}),
    ("video key", {"inputs": [{"video": [b64, b64]}]}),
]:
    exp = (
        "ok"
        if label
        in (
            "text huge 1M chars",
            "text as path string",
            "text as file url",
            "text is data uri string",
            "text path-like missing",
        )
        else "error"
    )
    case(H, label, exp, (lambda r: unit(r["embeddings"])) if exp == "ok" else None)(lambda body=body: hcall(body))
case(H, "UMARVEL_ALLOW_URLS bogus")(
    lambda: (
        os.environ.__setitem__("UMARVEL_ALLOW_URLS", "yes"),
        __import__("umarvel_st.hub.handler", fromlist=["x"]).EndpointHandler(str(DEMO)),
    )[1]
)
case(H, "allow urls: loopback refused")(
    lambda: (
        os.environ.__setitem__("UMARVEL_ALLOW_URLS", "1"),
        __import__("umarvel_st.hub.handler", fromlist=["x"]).EndpointHandler(str(DEMO))(
            {"inputs": [{"image": "http://127.0.0.1:1/x.png"}]}
        ),
    )[1]
)
case(H, "reset env", "ok")(lambda: os.environ.pop("UMARVEL_ALLOW_URLS", None))

# ------------------------------------------------------------------ eval mbeir
V = "eval"
DATA = W / "data"


def _data():
    if not DATA.exists():
        run_cli(
            "make-synthetic", DATA, "--test-queries", 2, "--train-queries", 4, "--pool-size", 6, "--image-size", 32
        )
    return DATA


def _bad_data(name, mutate):
    d = W / f"data-{name}"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(_data(), d)
    mutate(d)
    return d


def ev(data, *extra, task="mscoco_task0"):
    output = W / f"out-{next(COUNTER)}"
    return run_cli(
        "eval", "mbeir", "--model", DEMO, "--data", data, "--tasks", task, "--output", output, *EVAL_FLAGS, *extra
    )


def q0(root):
    return root / "query/test/mbeir_mscoco_task0_test.jsonl"


def q3(root):
    return root / "query/test/mbeir_mscoco_task3_test.jsonl"


def ev3(data, *extra):
    return ev(data, *extra, task="mscoco_task3")


def remap(path, change):
    lines = path.read_text().splitlines()
    path.write_text("".join(json.dumps(change(json.loads(line))) + "\n" for line in lines))


def qrels_path(root, task):
    return root / f"qrels/test/mbeir_{task}_test_qrels.txt"


case(V, "eval ok", "ok")(lambda: ev(_data()))
case(V, "data missing")(lambda: ev(W / "none"))
case(V, "data is a file")(lambda: ev(IMG))
case(V, "unknown task")(lambda: ev(_data(), "--tasks", "bogus_task9"))
case(V, "batch-size 0")(lambda: ev(_data(), "--batch-size", 0))
case(V, "shard-size 0")(lambda: ev(_data(), "--shard-size", 0))
case(V, "split train without data")(lambda: ev(_data(), "--split", "val"))
case(V, "model missing")(
    lambda: run_cli("eval", "mbeir", "--model", W / "nomodel", "--data", _data(), "--no-progress-bar")
)
case(V, "model is data folder")(
    lambda: run_cli("eval", "mbeir", "--model", _data(), "--data", _data(), "--no-progress-bar", "--output", W / "o1")
)
case(V, "query file non-utf8")(
    lambda: ev(_bad_data("nonutf8", lambda d: q0(d).write_bytes(q0(d).read_bytes() + b"\xff\xfe\n")))
)
case(V, "query file malformed json")(
    lambda: ev(_bad_data("badjson", lambda d: q0(d).write_text(q0(d).read_text() + "{oops\n")))
)
case(V, "query file empty")(lambda: ev(_bad_data("emptyq", lambda d: q0(d).write_text(""))))
case(V, "query whitespace text, no image")(
    lambda: ev(
        _bad_data(
            "wsq",
            lambda d: q0(d).write_text(
                json.dumps(
                    {
                        "qid": "9:1",
                        "query_txt": "  ",
                        "query_img_path": None,
                        "query_modality": "text",
                        "query_src_content": "",
                        "pos_cand_list": ["9:1"],
                        "neg_cand_list": [],
                        "task_id": 0,
                    }
                )
                + "\n"
            ),
        )
    )
)
case(V, "query record missing qid")(
    lambda: ev(
        _bad_data(
            "noqid",
            lambda d: q0(d).write_text(
                "\n".join(
                    json.dumps({key: value for key, value in json.loads(line).items() if key != "qid"})
                    for line in q0(d).read_text().splitlines()
                )
                + "\n"
            ),
        )
    )
)
case(V, "query is a list")(lambda: ev(_bad_data("qlist", lambda d: q0(d).write_text("[1,2]\n"))))
case(V, "image query img_path ../ escape")(
    lambda: ev3(
        _bad_data("escape3", lambda d: remap(q3(d), lambda r: {**r, "query_img_path": "../../../../etc/passwd.png"}))
    )
)
case(V, "image query img_path absolute")(
    lambda: ev3(_bad_data("abs3", lambda d: remap(q3(d), lambda r: {**r, "query_img_path": str(IMG)})))
)
case(V, "image query img missing file")(
    lambda: ev3(
        _bad_data(
            "imgmiss3", lambda d: [p.unlink() for p in (d / "mbeir_images/synthetic/mscoco_task3").rglob("q*.png")]
        )
    )
)
case(V, "image query img not an image")(
    lambda: ev3(
        _bad_data(
            "imgbad3",
            lambda d: [p.write_text("x") for p in (d / "mbeir_images/synthetic/mscoco_task3").rglob("q*.png")],
        )
    )
)
case(V, "image query img bomb")(
    lambda: ev3(
        _bad_data(
            "imgbomb3",
            lambda d: [
                p.write_bytes(bomb_png())
                for p in list((d / "mbeir_images/synthetic/mscoco_task3").rglob("q*.png"))[:1]
            ],
        )
    )
)
case(V, "qrels names missing candidate (logged, counted)", "ok")(
    lambda: ev(
        _bad_data(
            "qrelmiss",
            lambda d: qrels_path(d, "mscoco_task0").write_text(
                "\n".join(
                    " ".join([line.split()[0], "0", "999:999", "1", "0"])
                    for line in qrels_path(d, "mscoco_task0").read_text().splitlines()
                )
                + "\n"
            ),
        )
    )
)
case(V, "qrels query absent")(lambda: ev(_bad_data("qrelnoq", lambda d: qrels_path(d, "mscoco_task0").write_text(""))))
case(V, "text query img_path ignored (text modality)", "ok")(
    lambda: ev(
        _bad_data(
            "escape",
            lambda d: q0(d).write_text(
                "\n".join(
                    json.dumps({**json.loads(line), "query_img_path": "../../../../etc/passwd"})
                    for line in q0(d).read_text().splitlines()
                )
                + "\n"
            ),
        )
    )
)
case(V, "text query img_path absolute ignored", "ok")(
    lambda: ev(
        _bad_data(
            "abs",
            lambda d: q0(d).write_text(
                "\n".join(
                    json.dumps({**json.loads(line), "query_img_path": str(IMG)})
                    for line in q0(d).read_text().splitlines()
                )
                + "\n"
            ),
        )
    )
)
case(V, "text query: query image deleted, unused", "ok")(
    lambda: ev(
        _bad_data(
            "imgmiss", lambda d: [p.unlink() for p in (d / "mbeir_images/synthetic/mscoco_task0").rglob("q*.png")]
        )
    )
)
case(V, "instructions file missing")(
    lambda: ev(_bad_data("noinstr", lambda d: (d / "instructions/query_instructions.tsv").unlink()))
)
case(V, "instructions file garbage")(
    lambda: ev(
        _bad_data("badinstr", lambda d: (d / "instructions/query_instructions.tsv").write_text("a\tb\n\r\n\xa0\n"))
    )
)
case(V, "qrels missing")(
    lambda: ev(_bad_data("noqrels", lambda d: (d / "qrels/test/mbeir_mscoco_task0_test_qrels.txt").unlink()))
)
case(V, "qrels malformed")(
    lambda: ev(
        _bad_data("badqrels", lambda d: (d / "qrels/test/mbeir_mscoco_task0_test_qrels.txt").write_text("1 2\n"))
    )
)
case(V, "pool missing")(
    lambda: ev(_bad_data("nopool", lambda d: (d / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl").unlink()))
)
case(V, "pool duplicate did")(
    lambda: ev(
        _bad_data(
            "duppool",
            lambda d: (lambda p: p.write_text(p.read_text() + p.read_text().splitlines()[0] + "\n"))(
                d / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"
            ),
        )
    )
)
case(V, "pool text modality with img_path")(
    lambda: ev(
        _bad_data(
            "textimg",
            lambda d: (
                lambda p: p.write_text(
                    "\n".join(
                        json.dumps({**json.loads(line), "modality": "text", "txt": None})
                        for line in p.read_text().splitlines()
                    )
                    + "\n"
                )
            )(d / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"),
        )
    )
)
case(V, "pos_cand_list not in pool (qrels rule)", "ok")(
    lambda: ev(
        _bad_data(
            "posmiss",
            lambda d: q0(d).write_text(
                "\n".join(
                    json.dumps({**json.loads(line), "pos_cand_list": ["999:999"]})
                    for line in q0(d).read_text().splitlines()
                )
                + "\n"
            ),
        )
    )
)


def _cache_damage(kind):
    out = W / f"cache-{kind}"
    run_cli(
        "eval",
        "mbeir",
        "--model",
        DEMO,
        "--data",
        _data(),
        "--tasks",
        "mscoco_task0",
        "--output",
        out,
        "--no-progress-bar",
        "--device",
        "cpu",
    )
    files = sorted(p for p in (out / "embeddings").rglob("*") if p.is_file())
    npys = [p for p in files if p.suffix == ".npy"]
    target = npys[0]
    if kind == "truncate":
        target.write_bytes(target.read_bytes()[:50])
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "nan":
        a = np.load(target)
        np.save(target, np.full_like(a, np.nan)) if a.dtype.kind == "f" else None
    elif kind == "delete":
        target.unlink()
    elif kind == "json":
        [p.write_text("{") for p in files if p.suffix == ".json"][:1]
    run_cli(
        "eval",
        "mbeir",
        "--model",
        DEMO,
        "--data",
        _data(),
        "--tasks",
        "mscoco_task0",
        "--output",
        out,
        "--no-progress-bar",
        "--device",
        "cpu",
    )
    r1 = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return r1 and r1.get("average", r1)


for kind in ("truncate", "empty", "nan", "delete", "json"):
    case(
        V,
        f"cache damaged: {kind}",
        "ok",
        lambda r: None if r and "nan" not in json.dumps(r).lower() else f"bad result {str(r)[:100]}",
    )(lambda kind=kind: _cache_damage(kind))


def _cache_after_weights_change():
    out = W / "cache-weights"
    d = W / "model-w"
    shutil.copytree(DEMO, d, dirs_exist_ok=True)
    run_cli(
        "eval",
        "mbeir",
        "--model",
        d,
        "--data",
        _data(),
        "--tasks",
        "mscoco_task0",
        "--output",
        out,
        "--no-progress-bar",
        "--device",
        "cpu",
    )
    r1 = (out / "results.json").read_text()
    m = umarvel_st.load(str(d), device="cpu")
    with torch.no_grad():
        for p in m[0].model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    m.save(str(d))
    run_cli(
        "eval",
        "mbeir",
        "--model",
        d,
        "--data",
        _data(),
        "--tasks",
        "mscoco_task0",
        "--output",
        out,
        "--no-progress-bar",
        "--device",
        "cpu",
    )
    return r1, (out / "results.json").read_text()


case(
    V,
    "cache invalidated on weight change",
    "ok",
    lambda r: "same results after weight change (cache reused?)" if r[0] == r[1] else None,
)(_cache_after_weights_change)
case(V, "evaluator tasks=[]")(
    lambda: __import__("umarvel_st.evaluation.mbeir_evaluator", fromlist=["x"]).MBEIREvaluator(
        data_root=str(_data()), tasks=[]
    )
)
case(V, "bad flag")(lambda: run_cli("eval", "mbeir", "--bogus"))
case(V, "bench not mbeir")(lambda: run_cli("eval", "beir", "--model", DEMO, "--data", _data()))


def _sharded_cache_damage(kind):
    """Evaluate with 2-row shards, damage the cache (a middle shard deleted, the ids permuted), evaluate again."""
    out = W / f"shards-{kind}"
    ev(_data(), "--output", out, "--shard-size", 2)
    first = json.loads((out / "results.json").read_text())["average"]
    shards = sorted(p for p in (out / "embeddings").rglob("*.npy") if "ids" not in p.name)
    if kind == "middle shard deleted":
        shards[len(shards) // 2].unlink()
    else:
        for ids in (out / "embeddings").rglob("*ids*.npy"):
            values = np.load(ids)
            np.save(ids, values[::-1].copy())
    ev(_data(), "--output", out, "--shard-size", 2)
    second = json.loads((out / "results.json").read_text())["average"]
    return first, second


for damage in ("middle shard deleted", "ids permuted"):
    case(
        V,
        f"cache {damage}: re-encoded or refused",
        "ok",
        lambda r: None if r[0] == r[1] else f"score {r[0]} -> {r[1]}",
    )(lambda damage=damage: _sharded_cache_damage(damage))
case(V, "lone CR and no-break space in query text", "ok")(
    lambda: ev(_bad_data("crnbsp", lambda d: remap(q0(d), lambda r: {**r, "query_txt": "a\rdog\u00a0on grass"})))
)
case(V, "query text with control tokens", "ok")(
    lambda: ev(
        _bad_data("ctrlq", lambda d: remap(q0(d), lambda r: {**r, "query_txt": "<|image_pad|><instruction_end>"}))
    )
)
case(V, "--devices bogus")(lambda: ev(_data(), "--devices", "tpu:0", "cpu"))
case(V, "--instruction-seed negative", "ok")(lambda: ev(_data(), "--instruction-seed", -1))
case(V, "--pool global", "ok")(lambda: ev(_data(), "--pool", "global"))
case(V, "--output is a file")(lambda: ev(_data(), "--output", IMG))
case(V, "--cache-dir is a file")(lambda: ev(_data(), "--cache-dir", IMG))
case(E, "prompt with control tokens stays text", "ok", unit)(
    lambda: model().encode_query(["a"], prompt="<instruction_end><emb><|image_pad|>", show_progress_bar=False)
)
case(E, "batch_size True (sentence-transformers reads it as 1)", "upstream")(lambda: enc(["a"], batch_size=True))
case(E, "both dtype spellings", "error")(lambda: fm(model_kwargs={"dtype": "bfloat16", "torch_dtype": "float32"}))
case(E, "image in instruction field")(lambda: enc([{"text": "a", "instruction": make_test_image(8, 8)}]))


def _qwen3_one_frame():
    from umarvel_st.testing import build_tiny_backbone

    folder = build_tiny_backbone("qwen3_vl", W / "qwen3", with_umarvel_tokens=True)
    qwen3 = umarvel_st.from_mllm(str(folder), device="cpu")
    return qwen3.encode([{"video": [make_test_image(32, 32)]}, {"video": np.zeros((3, 32, 32, 3), np.uint8)}])


case(E, "Qwen3-VL one- and three-frame videos", "ok", unit)(_qwen3_one_frame)


# ------------------------------------------------------------------ train
T = "train"


def recipe(text, name="r"):
    p = W / f"{name}-{next(COUNTER)}.yaml"
    p.write_text(text)
    return p


PAIRS = W / "pairs.jsonl"
PAIRS.write_text("\n".join(json.dumps({"query": f"q{i}", "positive": f"p{i}"}) for i in range(8)) + "\n")
BASE = f"""name: t
base_model: {TINY}
output_dir: {W}/runs/OUT
stages:
  - name: s
    data: {{kind: pairs, path: {PAIRS}}}
    adapter: lora
    lora_r: 2
    lora_alpha: 4
    batch_size: 4
    max_steps: 1
    gradient_checkpointing: false
"""


def tr(text, *extra):
    return run_cli("train", recipe(text.replace("OUT", str(next(COUNTER)))), "--dry-run", *extra)


case(T, "dry-run ok", "ok")(lambda: tr(BASE))
case(T, "recipe missing")(lambda: run_cli("train", W / "none.yaml", "--dry-run"))
case(T, "recipe empty")(lambda: tr(""))
case(T, "recipe not yaml")(lambda: tr("{{{:"))
case(T, "recipe a list")(lambda: tr("- a\n- b\n"))
case(T, "stages mapping")(lambda: tr(BASE.replace("stages:\n  - name: s", "stages:\n  s:\n    name: s")))
case(T, "lr 1e-4 (yaml string)", "ok")(lambda: tr(BASE + "    lr: 1e-4\n"))
case(T, "lr NaN")(lambda: tr(BASE + "    lr: .nan\n"))
case(T, "lr negative")(lambda: tr(BASE + "    lr: -1\n"))
case(T, "epochs 0.5")(lambda: tr(BASE + "    epochs: 0.5\n"))
case(T, "batch_size 2.5")(lambda: tr(BASE.replace("batch_size: 4", "batch_size: 2.5")))
case(T, "batch_size true")(lambda: tr(BASE.replace("batch_size: 4", "batch_size: true")))
case(T, "lora_dropout 2")(lambda: tr(BASE + "    lora_dropout: 2\n"))
case(T, "learnable_temperature 'false'")(lambda: tr(BASE + "    learnable_temperature: 'false'\n"))
case(T, "unknown stage field")(lambda: tr(BASE + "    bogus: 1\n"))
case(T, "unknown top field")(lambda: tr(BASE + "bogus: 1\n"))
case(T, "stage name ../x")(lambda: tr(BASE.replace("name: s\n", "name: ../x\n")))
case(T, "stage name empty")(lambda: tr(BASE.replace("name: s\n", "name: ''\n")))
case(T, "duplicate stage names")(lambda: tr(BASE + BASE.split("stages:\n")[1]))
case(T, "stages empty")(lambda: tr(BASE.split("stages:")[0] + "stages: []\n"))
case(T, "base_model int")(lambda: tr(BASE.replace(f"base_model: {TINY}", "base_model: 5")))
case(T, "base_model missing folder")(lambda: tr(BASE.replace(f"base_model: {TINY}", f"base_model: {W}/nomodel")))
case(T, "loss bogus")(lambda: tr(BASE + "    loss: bogus\n"))
case(T, "adapter bogus")(lambda: tr(BASE.replace("adapter: lora", "adapter: bogus")))
case(T, "data kind bogus")(lambda: tr(BASE.replace("kind: pairs", "kind: bogus")))
case(T, "pairs without path")(lambda: tr(BASE.replace(f", path: {PAIRS}", "")))
case(T, "pairs path missing")(lambda: tr(BASE.replace(str(PAIRS), str(W / "nopairs.jsonl"))))
case(T, "unknown data option")(lambda: tr(BASE.replace("kind: pairs,", "kind: pairs, bogus: 1,")))
case(T, "pairs file malformed json")(
    lambda: tr(
        BASE.replace(
            str(PAIRS),
            str((lambda p: (p.write_text('{"query": "a", "positive": "b"}\n{oops\n'), p)[1])(W / "badpairs.jsonl")),
        )
    )
)
case(T, "pairs row wrong type")(
    lambda: tr(
        BASE.replace(
            str(PAIRS), str((lambda p: (p.write_text('{"query": 5, "positive": "b"}\n'), p)[1])(W / "badpairs2.jsonl"))
        )
    )
)
case(T, "pairs .json malformed")(
    lambda: tr(BASE.replace(str(PAIRS), str((lambda p: (p.write_text('[{"query": "a",'), p)[1])(W / "badpairs.json"))))
)
case(T, "pairs negatives string")(
    lambda: tr(
        BASE.replace(
            str(PAIRS),
            str(
                (lambda p: (p.write_text('{"query": "a", "positive": "b", "negatives": "cde"}\n'), p)[1])(
                    W / "negstr.jsonl"
                )
            ),
        )
    )
)
case(T, "pairs negatives dict")(
    lambda: tr(
        BASE.replace(
            str(PAIRS),
            str(
                (lambda p: (p.write_text('{"query": "a", "positive": "b", "negatives": {"c": 1}}\n'), p)[1])(
                    W / "negdict.jsonl"
                )
            ),
        )
    )
)
case(T, "pairs image path escape")(
    lambda: tr(
        BASE.replace(
            str(PAIRS),
            str(
                (lambda p: (p.write_text('{"query": {"image": "../../etc/x.png"}, "positive": "b"}\n'), p)[1])(
                    W / "esc.jsonl"
                )
            ),
        )
    )
)
case(T, "pairs empty file")(
    lambda: tr(BASE.replace(str(PAIRS), str((lambda p: (p.write_text(""), p)[1])(W / "emptypairs.jsonl"))))
)
case(T, "pairs non-utf8")(
    lambda: tr(
        BASE.replace(
            str(PAIRS),
            str((lambda p: (p.write_bytes(b'{"query": "\xff", "positive": "b"}\n'), p)[1])(W / "nonutf.jsonl")),
        )
    )
)
case(T, "--set ok", "ok")(lambda: tr(BASE, "--set", "stages.0.lr=2e-4"))
case(T, "--set bad path")(lambda: tr(BASE, "--set", "stages.5.lr=1"))
case(T, "--set no =")(lambda: tr(BASE, "--set", "stages.0.lr"))
case(T, "--set unknown key")(lambda: tr(BASE, "--set", "stages.0.bogus=1"))
case(T, "--set bad value")(lambda: tr(BASE, "--set", "stages.0.lr=abc"))
case(T, "--set all_stages")(lambda: tr(BASE, "--set", "all_stages.bogus=3"))
case(T, "--restart-from unknown")(lambda: tr(BASE, "--restart-from", "nostage"))
case(T, "evaluate block bad")(lambda: tr(BASE + "evaluate: {data: /nonexistent, pool: bogus}\n"))
case(T, "evaluate block not dict")(lambda: tr(BASE + "evaluate: 5\n"))
case(T, "output_dir is a file")(lambda: tr(BASE.replace(f"output_dir: {W}/runs/OUT", f"output_dir: {IMG}")))
case(T, "seed -1")(lambda: tr("seed: -1\n" + BASE))
case(T, "deepspeed missing file")(lambda: tr("deepspeed: /nonexistent.json\n" + BASE))
case(T, "shipped recipe name unknown")(lambda: run_cli("train", "no-such-recipe", "--dry-run"))
case(T, "init_from bogus")(lambda: tr(BASE + "    init_from: bogus\n"))
case(T, "max_pixels 0")(lambda: tr(BASE + "    max_pixels: 0\n"))
case(T, "mbeir root missing")(
    lambda: tr(BASE.replace(f"kind: pairs, path: {PAIRS}", f"kind: mbeir, root: {W}/nombeir"))
)


def _train_then_change():
    out = W / "runs/real"
    text = BASE.replace(f"{W}/runs/OUT", str(out))
    p = recipe(text)
    run_cli("train", p)
    p2 = recipe(text.replace("lora_r: 2", "lora_r: 3"))
    return run_cli("train", p2)


case(T, "real train then changed recipe refused")(_train_then_change)

# ------------------------------------------------------------------ publish / convert
P = "publish"


def pub(*args):
    return run_cli("publish", *args)


case(P, "dry-run ok", "ok", lambda r: None if (W / "pub-ok/modules.json").exists() else "no modules.json")(
    lambda: pub(DEMO, "org/u-marvel", "--dry-run", W / "pub-ok")
)
case(P, "published loads with plain ST (no umarvel_st classes named)", "ok", lambda r: r)(
    lambda: None if "umarvel_st" not in (W / "pub-ok/modules.json").read_text() else "modules.json names umarvel_st"
)
case(P, "model dir missing")(lambda: pub(W / "nomodel", "org/x", "--dry-run", W / "pub1"))
case(P, "model dir not a model")(lambda: pub(_data(), "org/x", "--dry-run", W / "pub2"))
case(P, "repo id bad")(lambda: pub(DEMO, "not a repo id!", "--dry-run", W / "pub3"))
case(P, "eval report missing")(lambda: pub(DEMO, "org/x", "--dry-run", W / "pub4", "--eval-report", W / "none.json"))
case(P, "eval report malformed")(
    lambda: pub(
        DEMO, "org/x", "--dry-run", W / "pub5", "--eval-report", (lambda p: (p.write_text("{"), p)[1])(W / "bad.json")
    )
)
case(P, "eval report wrong schema")(
    lambda: pub(
        DEMO,
        "org/x",
        "--dry-run",
        W / "pub6",
        "--eval-report",
        (lambda p: (p.write_text("[1]"), p)[1])(W / "bad2.json"),
    )
)
case(
    P,
    "bad eval report writes nothing",
    "ok",
    lambda r: "files written before error" if (W / "pub5").exists() and any((W / "pub5").iterdir()) else None,
)(lambda: None)
case(P, "run config missing")(lambda: pub(DEMO, "org/x", "--dry-run", W / "pub7", "--run-config", W / "none.yaml"))
case(P, "dry-run into non-empty dir")(lambda: pub(DEMO, "org/x", "--dry-run", _data()))
case(P, "dry-run into a file")(lambda: pub(DEMO, "org/x", "--dry-run", IMG))
case(P, "--exact-repo-id without --portable")(
    lambda: pub(DEMO, "org/x", "--dry-run", W / "pub8", "--exact-repo-id", "org/y")
)
case(
    P,
    "portable ok",
    "ok",
    lambda r: None if "built-in method" not in (W / "pub9/README.md").read_text() else "card prints built-in method",
)(lambda: pub(DEMO, "org/x", "--dry-run", W / "pub9", "--portable", "--exact-repo-id", "org/y"))
case(P, "adapter base on non-lora model")(
    lambda: pub(DEMO, "org/x", "--dry-run", W / "pub10", "--adapter-base-model", "org/base")
)
case(P, "license bogus (Hub checks on push)", "upstream")(
    lambda: pub(DEMO, "org/x", "--dry-run", W / "pub11", "--license", "not a license!")
)
case(P, "evil folder refused")(lambda: pub(_evil_folder(), "org/x", "--dry-run", W / "pub12"))
case(P, "evil code not run", "ok", lambda r: "code ran" if (W / "PWNED").exists() else None)(lambda: None)
C = "convert"
case(C, "source missing")(lambda: run_cli("convert", W / "nosrc", W / "conv1"))
case(C, "source not a checkpoint")(lambda: run_cli("convert", _data(), W / "conv2"))
case(C, "dest non-empty")(lambda: run_cli("convert", TINY, _data()))
case(C, "dest is a file")(lambda: run_cli("convert", TINY, IMG))
case(C, "max-pixels 0")(lambda: run_cli("convert", TINY, W / "conv3", "--max-pixels", 0))
case(C, "dtype bogus")(lambda: run_cli("convert", TINY, W / "conv4", "--dtype", "bogus"))
case(C, "convert ok", "ok", lambda r: None if (W / "conv5/modules.json").exists() else "nothing written")(
    lambda: run_cli("convert", TINY, W / "conv5", "--dtype", "float32")
)
case(C, "convert again without --overwrite")(lambda: run_cli("convert", TINY, W / "conv5"))
case(
    C,
    "convert a converted model is idempotent",
    "ok",
    lambda r: (
        None
        if np.allclose(
            *[
                umarvel_st.load(str(W / n), device="cpu").encode(["a dog", make_test_image(32, 32)])
                for n in ("conv5", "conv6")
            ],
            atol=1e-5,
        )
        else "embeddings changed"
    ),
)(lambda: run_cli("convert", W / "conv5", W / "conv6"))
# ------------------------------------------------------------------ demo / synthetic
D = "demo"
case(D, "make-synthetic image-size 0")(lambda: run_cli("make-synthetic", W / "syn1", "--image-size", 0))
case(D, "make-synthetic negative queries")(lambda: run_cli("make-synthetic", W / "syn2", "--test-queries", -1))
case(D, "make-synthetic pool 0")(lambda: run_cli("make-synthetic", W / "syn3", "--pool-size", 0))
case(D, "make-synthetic negative image size")(lambda: run_cli("make-synthetic", W / "syn6", "--image-size", -5))
case(D, "make-synthetic huge pool")(lambda: run_cli("make-synthetic", W / "syn4", "--pool-size", 10**9))
case(D, "make-synthetic into non-empty")(lambda: run_cli("make-synthetic", DEMO))
case(D, "make-synthetic into a file")(lambda: run_cli("make-synthetic", IMG))
case(D, "make-synthetic huge image")(lambda: run_cli("make-synthetic", W / "syn5", "--image-size", 100000))
case(D, "demo model missing")(lambda: run_cli("demo", "--model", W / "nomodel"))
case(
    D,
    "demo model missing writes nothing",
    "ok",
    lambda r: "data written before the model error" if (W / "nodata").exists() else None,
)(lambda: _try(lambda: run_cli("demo", "--model", W / "nomodel", "--data", W / "nodata")))
case(D, "demo data non-empty, not synthetic")(lambda: run_cli("demo", "--data", DEMO))
case(D, "demo data not synthetic")(lambda: run_cli("demo", "--data", IMG))
case(D, "demo model is evil folder")(lambda: run_cli("demo", "--model", _evil_folder(), "--data", _data()))
case(D, "demo evil not run", "ok", lambda r: "code ran" if (W / "PWNED").exists() else None)(lambda: None)

# ------------------------------------------------------------------ run
CLASSES = ("ok", "unclear", "crash", "silent", "security", "resource", "upstream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run only cases whose 'group:name' contains one of these")
    parser.add_argument("--output", help="write the Markdown summary here (e.g. benchmarks/results/campaign.md)")
    args = parser.parse_args()
    rows = []
    start = time.time()
    for group, name, expect, check, fn in CASES:
        if args.only and not any(part in f"{group}:{name}" for part in args.only):
            continue
        outcome, detail = classify(expect, check, fn)
        detail = detail.replace(str(W), "<tmp>").replace(str(REPO), "<repo>")
        rows.append((group, name, outcome, detail))
        print(f"{outcome:9s} {group:8s} {name:45s} {detail[:200]}", flush=True)
    seconds = time.time() - start
    counts = {outcome: sum(row[2] == outcome for row in rows) for outcome in CLASSES}
    print(f"\n{len(rows)} cases in {seconds:.0f}s:", counts)
    shutil.rmtree(W, ignore_errors=True)
    if args.output:
        lines = [
            "# Fault and bad-input campaign (issue 8, re-run)",
            "",
            "`PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python benchmarks/campaign.py --output benchmarks/results/campaign.md`",
            f"({len(rows)} cases, {seconds:.0f} s on 2 CPU cores; tiny offline models, loopback only).",
            "",
            "| class | cases |",
            "|---|---|",
            *(f"| {outcome} | {count} |" for outcome, count in counts.items()),
            "",
            "Classes: ok (works, or a clear error naming the item / file / field and the fix); unclear (a raw Python,",
            "numpy, urllib or torch exception); crash (a documented option fails); silent (a wrong result or an",
            "ignored input); security; resource (over 30 s or unbounded memory); upstream (sentence-transformers' or",
            "the Hub's own behaviour, outside this package).",
            "",
            "| class | group | case | outcome |",
            "|---|---|---|---|",
            *(
                f"| {outcome} | {group} | {name} | {detail[:160].replace('|', '/')} |"
                for group, name, outcome, detail in rows
                if outcome != "ok"
            ),
            "",
        ]
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines))


if __name__ == "__main__":
    main()
