#!/usr/bin/env python3
"""Tiny official-format token-label fixture for the import tests (Debian torch 1.13, no torchvision needed).

The official generate_label.py saves, per image, torch.stack([values.half(), indices.half()]) as a [2, k, h, w]
float16 tensor at <out>/<class_dir>/<stem>.pt, stem = file name up to the first '.'. We write the same for
2 classes × 2 images, k = 3, h = 2, w = 4, 40 classes; values and indices follow a formula the test re-computes.

Run: /usr/bin/python3 tools/make_token_label_fixtures.py
"""
import os
import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "AllTokens.Tests", "fixtures", "tokenlabel", "official")
K, H, W, C = 3, 2, 4, 40
FILES = {"n01440764": ["n01440764_10026", "n01440764_7"], "n02102040": ["n02102040_15"]}


def make(seed):
    values = torch.empty(K, H, W)
    indices = torch.empty(K, H, W, dtype=torch.long)
    for r in range(K):
        for y in range(H):
            for x in range(W):
                # descending over rank, distinct classes per location
                values[r, y, x] = 3.0 - r + 0.25 * y - 0.125 * x + 0.5 * seed
                indices[r, y, x] = (seed * 7 + r * 13 + y * 4 + x) % C
    return values, indices


def main():
    seed = 0
    for cls, stems in FILES.items():
        os.makedirs(os.path.join(ROOT, cls), exist_ok=True)
        for stem in stems:
            v, i = make(seed)
            torch.save(torch.stack([v.half(), i.half()]), os.path.join(ROOT, cls, stem + ".pt"))
            seed += 1


if __name__ == "__main__":
    main()
