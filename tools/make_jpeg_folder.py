#!/usr/bin/python3
"""Builds a throw-away ImageFolder of JPEGs for `alltokens bench`: Fashion-MNIST test images upscaled to 500×375
(bicubic, the 28×28 digit centred on a noisy background so the JPEGs are not trivially compressible).

usage: tools/make_jpeg_folder.py OUT_DIR [COUNT]   (default 500; needs /usr/share/datasets/fashion-mnist)
Writes OUT_DIR/train/<class>/<index>.jpg and OUT_DIR/val/<class>/<index>.jpg (one fifth of COUNT).
Not a test fixture: the output is not committed.
"""
import gzip
import os
import random
import sys

from PIL import Image

SRC = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def main():
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    with gzip.open(os.path.join(SRC, "t10k-images-idx3-ubyte.gz")) as f:
        images = f.read()[16:]
    with gzip.open(os.path.join(SRC, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = f.read()[8:]
    rng = random.Random(0)
    for i in range(count + count // 5):
        split = "train" if i < count else "val"
        digit = Image.frombytes("L", (28, 28), images[i * 784:(i + 1) * 784]).convert("RGB").resize((375, 375), Image.BICUBIC)
        canvas = Image.frombytes("RGB", (500, 375), bytes(rng.randrange(256) for _ in range(500 * 375 * 3)))
        canvas.paste(digit, (62, 0))
        d = os.path.join(out, split, CLASSES[labels[i]])
        os.makedirs(d, exist_ok=True)
        canvas.save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
    print(f"wrote {count} train and {count // 5} val JPEGs under {out}")


if __name__ == "__main__":
    main()
