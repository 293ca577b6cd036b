#!/usr/bin/python3
"""Writes the image fixtures used by tests/AllTokens.Tests/Data.

Run with Debian's /usr/bin/python3 (Pillow 9.4, torch 1.13). torchvision is not needed: its eval
preprocessing (Resize(int) on the shorter side, CenterCrop, ToTensor, Normalize) is reproduced here
with Pillow calls and plain torch ops, following torchvision's documented semantics.

Everything is deterministic (seeded RNG). Output: tests/AllTokens.Tests/fixtures/images/
  *.png/*.jpg/*.gif/*.bmp/*.webp  synthetic inputs for the decoder
  <name>.decoded.rgb              what PIL's Image.open(f).convert('RGB') gives (raw bytes, HWC)
  src_*.rgb                       raw RGB inputs for the resize / eval-transform tests
  resize/*.rgb                    PIL Image.resize outputs (raw RGB bytes)
  eval/*.f32                      eval-transform outputs, float32 little-endian, CHW
  err_*                           broken files for the decoder's error tests
  manifest.json                   lists every case above with its parameters
Fixtures are a reference: never regenerate them to make a test pass.
"""
import io
import json
import math
import os
import random
import struct
import sys
import zlib

import PIL
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "AllTokens.Tests", "fixtures", "images")

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write(rel, data):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def gradient_noise(w, h, seed):
    """RGB gradient plus strong noise, with some saturated pixels so that resampling clips."""
    rng = random.Random(seed)
    px = bytearray()
    for y in range(h):
        for x in range(w):
            r = x * 255 // max(w - 1, 1)
            g = y * 255 // max(h - 1, 1)
            b = (x * 13 + y * 29) % 256
            if rng.random() < 0.08:
                px += bytes(rng.choice((0, 255)) for _ in range(3))
            else:
                px += bytes(min(255, max(0, c + rng.randint(-40, 40))) for c in (r, g, b))
    return Image.frombytes("RGB", (w, h), bytes(px))


def smooth(w, h):
    """Smooth content: JPEG decoders then differ by a level or two at most."""
    px = bytearray()
    for y in range(h):
        for x in range(w):
            r = 128 + 100 * math.sin(x / 7.0)
            g = 128 + 100 * math.cos(y / 5.0)
            b = 128 + 60 * math.sin((x + y) / 9.0)
            px += bytes(int(round(c)) for c in (r, g, b))
    return Image.frombytes("RGB", (w, h), bytes(px))


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def torchvision_resize_shorter(img, size, resample):
    """torchvision F.resize(img, size:int) for PIL images."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), resample)


def torchvision_center_crop(img, size):
    """torchvision F.center_crop(img, [size, size]) for PIL images (zero padding when too small)."""
    w, h = img.size
    if size > w or size > h:
        left = (size - w) // 2 if size > w else 0
        top = (size - h) // 2 if size > h else 0
        right = (size - w + 1) // 2 if size > w else 0
        bottom = (size - h + 1) // 2 if size > h else 0
        padded = Image.new("RGB", (w + left + right, h + top + bottom), (0, 0, 0))
        padded.paste(img, (left, top))
        img = padded
        w, h = img.size
        if w == size and h == size:
            return img
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def eval_transform(img, img_size, crop_pct, resample):
    """timm 0.4.5 transforms_imagenet_eval: Resize(floor(img_size/crop_pct)), CenterCrop, ToTensor, Normalize."""
    scale_size = int(math.floor(img_size / crop_pct))
    img = torchvision_resize_shorter(img, scale_size, resample)
    img = torchvision_center_crop(img, img_size)
    w, h = img.size
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3)
    t = t.permute(2, 0, 1).contiguous().float().div(255)  # ToTensor
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    t = t.sub(mean).div(std)  # Normalize
    return t.contiguous().numpy().astype("<f4").tobytes()


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {"generator": "tools/make_image_fixtures.py", "pillow": PIL.__version__, "torch": torch.__version__,
                "decode": [], "resize": [], "eval": [], "errors": []}

    # ---- decoder inputs -------------------------------------------------------------------------------
    def add_decode(file_name, img, exact, **save_args):
        buf = io.BytesIO()
        img.save(buf, **save_args)
        write(file_name, buf.getvalue())
        seen = Image.open(io.BytesIO(buf.getvalue()))
        seen.load()
        rgb = seen.convert("RGB")
        write(file_name + ".decoded.rgb", rgb.tobytes())
        manifest["decode"].append({"file": file_name, "width": rgb.size[0], "height": rgb.size[1],
                                   "mode": seen.mode, "exact": exact})

    grad = gradient_noise(37, 23, seed=1)
    add_decode("gradient_37x23.png", grad, True, format="PNG")

    gray = Image.frombytes("L", (19, 13), bytes((x * 13 + y * 17 + (x * y) % 7) % 256 for y in range(13) for x in range(19)))
    add_decode("gray_19x13.png", gray, True, format="PNG")

    rgba_px = bytearray()
    for y in range(17):
        for x in range(21):
            # alpha runs 0..255 across the image, including fully transparent pixels with non-zero colour
            rgba_px += bytes(((x * 12) % 256, (y * 15) % 256, (x * 7 + y * 5) % 256, (x * 13 + y * 3) % 256 if x else 0))
    add_decode("rgba_21x17.png", Image.frombytes("RGBA", (21, 17), bytes(rgba_px)), True, format="PNG")

    la = Image.merge("LA", (gray, gray.point(lambda v: 255 - v)))
    add_decode("gray_alpha_19x13.png", la, True, format="PNG")

    pal = gradient_noise(23, 19, seed=2).quantize(colors=32, method=Image.MEDIANCUT, dither=Image.NONE)
    add_decode("palette_23x19.gif", pal, True, format="GIF")
    add_decode("palette_23x19.png", pal, True, format="PNG")

    add_decode("rgb_25x15.bmp", gradient_noise(25, 15, seed=3), True, format="BMP")
    add_decode("lossless_18x11.webp", gradient_noise(18, 11, seed=4), True, format="WEBP", lossless=True)
    add_decode("smooth_64x48.jpg", smooth(64, 48), False, format="JPEG", quality=90)

    # ---- error cases ------------------------------------------------------------------------------------
    png_bytes = open(os.path.join(OUT, "gradient_37x23.png"), "rb").read()
    jpg_bytes = open(os.path.join(OUT, "smooth_64x48.jpg"), "rb").read()
    write("err_empty.png", b"")
    write("err_truncated.png", png_bytes[: len(png_bytes) * 2 // 3])
    write("err_truncated.jpg", jpg_bytes[: len(jpg_bytes) * 2 // 3])
    rng = random.Random(7)
    write("err_random.png", bytes(rng.randrange(256) for _ in range(512)))
    # A valid PNG whose header claims 20000x20000 pixels; its pixel data is a few bytes of one row.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x80" * 60000)
    write("err_oversize.png", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    manifest["errors"] = ["err_empty.png", "err_truncated.png", "err_truncated.jpg", "err_random.png", "err_oversize.png"]

    # ---- PIL resize ------------------------------------------------------------------------------------
    sources = {"src_37x23.rgb": grad, "src_16x16.rgb": gradient_noise(16, 16, seed=5)}
    for name, img in sources.items():
        write(name, img.tobytes())
    resize_cases = [
        ("src_37x23.rgb", (37, 23)),   # same size: a copy
        ("src_37x23.rgb", (64, 40)),   # up-scaling, non-integer factors
        ("src_37x23.rgb", (74, 46)),   # up-scaling by exactly 2
        ("src_37x23.rgb", (20, 13)),   # down-scaling, non-integer factors
        ("src_37x23.rgb", (7, 5)),     # strong down-scaling
        ("src_37x23.rgb", (36, 22)),   # down by one pixel
        ("src_37x23.rgb", (15, 23)),   # horizontal pass only
        ("src_37x23.rgb", (37, 50)),   # vertical pass only
        ("src_37x23.rgb", (50, 11)),   # up one axis, down the other
        ("src_37x23.rgb", (1, 1)),
        ("src_16x16.rgb", (24, 24)),
        ("src_16x16.rgb", (5, 9)),
    ]
    for src, (w, h) in resize_cases:
        img = sources[src]
        for fname, f in FILTERS.items():
            out = img.resize((w, h), f)
            rel = "resize/%s_to_%dx%d_%s.rgb" % (src[:-4], w, h, fname)
            write(rel, out.tobytes())
            manifest["resize"].append({"source": src, "sourceWidth": img.size[0], "sourceHeight": img.size[1],
                                       "width": w, "height": h, "filter": fname, "expected": rel})

    # ---- eval transform --------------------------------------------------------------------------------
    eval_src = gradient_noise(53, 41, seed=6)
    write("src_53x41.rgb", eval_src.tobytes())
    eval_src_tall = gradient_noise(29, 47, seed=8)
    write("src_29x47.rgb", eval_src_tall.tobytes())
    eval_cases = [
        ("src_53x41.rgb", eval_src, 32, 0.875, "bicubic"),
        ("src_53x41.rgb", eval_src, 32, 0.875, "bilinear"),
        ("src_53x41.rgb", eval_src, 16, 1.0, "bicubic"),
        ("src_29x47.rgb", eval_src_tall, 32, 0.875, "bicubic"),
        ("src_29x47.rgb", eval_src_tall, 24, 0.9, "nearest"),
    ]
    for src, img, size, pct, fname in eval_cases:
        rel = "eval/%s_size%d_pct%s_%s.f32" % (src[:-4], size, str(pct).replace(".", "p"), fname)
        write(rel, eval_transform(img, size, pct, FILTERS[fname]))
        manifest["eval"].append({"source": src, "sourceWidth": img.size[0], "sourceHeight": img.size[1],
                                 "imgSize": size, "cropPct": pct, "filter": fname, "expected": rel})

    write("manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print("wrote %s (%d bytes)" % (os.path.normpath(OUT), total), file=sys.stderr)


if __name__ == "__main__":
    main()
