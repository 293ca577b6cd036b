#!/usr/bin/python3
"""Writes the RandAugment/ColorJitter op fixtures used by tests/AllTokens.Tests/Data/AugmentOpsTests.cs.

Run with Debian's /usr/bin/python3 (Pillow 9.4). Each case applies one Pillow call (the call timm's
auto_augment.py / torchvision's functional_pil.py makes for that op) with fixed arguments to a small
deterministic image and records the output bytes. No randomness is involved: the tests fix the
parameters that the ops would draw.

Output: tests/AllTokens.Tests/fixtures/augment/ops.json
  {"images": {name: {"w", "h", "hex"}}, "cases": [{"op", "image", "args", "hex"}]}
hex is the raw RGB bytes (HWC) of the image, hex-encoded.
Fixtures are a reference: never regenerate them to make a test pass.
"""
import json
import os
import random

import PIL
from PIL import Image, ImageEnhance, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "AllTokens.Tests", "fixtures", "augment")
FILL = (124, 116, 104)
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def noisy(w, h, seed, lo=0, hi=255):
    rng = random.Random(seed)
    px = bytearray()
    for y in range(h):
        for x in range(w):
            base = ((x * 37 + y * 11) % 97, (x * 5 + y * 23) % 131, (x * y * 7) % 113)
            px += bytes(max(lo, min(hi, lo + (c * (hi - lo)) // 130 + rng.randint(-25, 25))) for c in base)
    return Image.frombytes("RGB", (w, h), bytes(px))


def main():
    images = {
        "full": noisy(13, 11, 1),
        "narrow": noisy(12, 9, 2, lo=40, hi=180),
        "square": noisy(10, 10, 3),
    }
    cases = []

    def add(op, name, args, out):
        assert out.mode == "RGB" and out.size == images[name].size
        cases.append({"op": op, "image": name, "args": args, "hex": out.tobytes().hex()})

    for name, img in images.items():
        add("autocontrast", name, {}, ImageOps.autocontrast(img))
        add("equalize", name, {}, ImageOps.equalize(img))
        add("invert", name, {}, ImageOps.invert(img))
        for bits in (0, 1, 2, 3, 4, 7):
            add("posterize", name, {"bits": bits}, ImageOps.posterize(img, bits) if bits < 8 else img)
        for thresh in (0, 51, 128, 200, 256):
            add("solarize", name, {"thresh": thresh}, ImageOps.solarize(img, thresh))
        for addv in (0, 33, 110):
            # timm solarize_add: values below 128 get min(255, v + add), others stay.
            lut = [min(255, i + addv) if i < 128 else i for i in range(256)]
            add("solarize_add", name, {"add": addv}, img.point(lut * 3))
        for factor in (0.1, 0.37, 1.0, 1.46, 1.9):
            add("color", name, {"factor": factor}, ImageEnhance.Color(img).enhance(factor))
            add("contrast", name, {"factor": factor}, ImageEnhance.Contrast(img).enhance(factor))
            add("brightness", name, {"factor": factor}, ImageEnhance.Brightness(img).enhance(factor))
            add("sharpness", name, {"factor": factor}, ImageEnhance.Sharpness(img).enhance(factor))
        for rs, r in RESAMPLE.items():
            for deg in (17.3, -25.0, 30.0, 90.0):
                add("rotate", name, {"degrees": deg, "resample": rs}, img.rotate(deg, resample=r, fillcolor=FILL))
            for f in (0.21, -0.3):
                add("shear_x", name, {"factor": f, "resample": rs},
                    img.transform(img.size, Image.AFFINE, (1, f, 0, 0, 1, 0), resample=r, fillcolor=FILL))
                add("shear_y", name, {"factor": f, "resample": rs},
                    img.transform(img.size, Image.AFFINE, (1, 0, 0, f, 1, 0), resample=r, fillcolor=FILL))
            for pct in (0.27, -0.45, 0.1):
                add("translate_x_rel", name, {"pct": pct, "resample": rs},
                    img.transform(img.size, Image.AFFINE, (1, 0, pct * img.size[0], 0, 1, 0), resample=r, fillcolor=FILL))
                add("translate_y_rel", name, {"pct": pct, "resample": rs},
                    img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, pct * img.size[1]), resample=r, fillcolor=FILL))

    os.makedirs(OUT, exist_ok=True)
    doc = {
        "pillow": PIL.__version__,
        "fill": FILL,
        "images": {k: {"w": v.size[0], "h": v.size[1], "hex": v.tobytes().hex()} for k, v in images.items()},
        "cases": cases,
    }
    with open(os.path.join(OUT, "ops.json"), "w") as f:
        json.dump(doc, f, indent=0)
    print(f"{len(cases)} cases written to {OUT}/ops.json")


if __name__ == "__main__":
    main()
