#!/usr/bin/env python3
"""Golden values for RoIAlign and the dense token-label targets, from torchvision's own roi_align.

Needs Debian's python3-torch (1.13) and python3-torchvision (0.14.1: `apt-get install python3-torchvision`).
Writes tests/AllTokens.Tests/fixtures/tokenlabel/roi_align.json:
  roi:     a [C, H, W] map and boxes (x1, y1, x2, y2) with torchvision.ops.roi_align(aligned=False,
           spatial_scale=1, sampling_ratio=-1) outputs at several output sizes; boxes cross every border.
  targets: the official dense-target construction (LVVIT.md §6.4, tlt get_featuremaps/get_label) re-stated here:
           scatter top-k logits into C classes (others 0), optional flip of the map's last axis, roi_align of the
           crop to L×L and 1×1, softmax over classes, p·on + off. "official" passes the box as the official code
           does, (top, left, bottom, right)·W − 0.5; "geometric" passes (left·W, top·H, right·W, bottom·H) − 0.5.

Run: /usr/bin/python3 tools/make_roi_align_fixture.py
"""
import json
import os

import torch
from torchvision.ops import roi_align

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "AllTokens.Tests", "fixtures", "tokenlabel", "roi_align.json")


def roi_cases(gen):
    C, H, W = 2, 5, 7
    fmap = torch.randn(C, H, W, generator=gen)
    boxes = [
        (-0.5, -0.5, W - 0.5, H - 0.5),  # full map with the -0.5 offset
        (0.0, 0.0, 3.0, 2.0),
        (1.3, 0.7, 5.9, 4.2),
        (-0.9, -0.8, 1.1, 0.6),          # top-left border, samples in [-1, 0]
        (5.2, 3.1, 7.6, 5.4),            # bottom-right border, samples beyond W-1 / H-1 and beyond W / H
        (2.0, 2.0, 2.3, 2.1),            # smaller than a pixel: widened to 1
        (-3.0, -2.5, 9.0, 8.0),          # larger than the map: samples outside [-1, W] contribute 0
        (0.25, 1.75, 6.75, 3.25),
    ]
    cases = []
    for out in [(1, 1), (2, 3), (4, 4), (7, 7)]:
        for b in boxes:
            rois = torch.tensor([[0.0, *b]], dtype=torch.float32)
            y = roi_align(fmap.unsqueeze(0), rois, output_size=out, spatial_scale=1.0, sampling_ratio=-1, aligned=False)
            cases.append({"box": list(b), "out": list(out), "values": y.flatten().tolist()})
    return {"C": C, "H": H, "W": W, "map": fmap.flatten().tolist(), "cases": cases}


def targets(gen):
    B, C, K, S, L, eps = 3, 12, 3, 6, 4, 0.1
    values = (torch.rand(B, K, S, S, generator=gen) * 6).sort(dim=1, descending=True).values
    indices = torch.stack([torch.randperm(C, generator=gen)[:K] for _ in range(B * S * S)]).view(B, S, S, K).permute(0, 3, 1, 2)
    # (srcW, srcH, flipped, top, left, cropH, cropW) in source pixels
    records = [(100, 80, False, 10, 20, 50, 60), (90, 90, True, 0, 30, 90, 45), (64, 48, True, 8.5, 3.25, 30.5, 41.0)]
    on, off = 1 - eps + eps / C, eps / C

    dense = torch.zeros(B, C, S, S)
    for b in range(B):
        dense[b].scatter_(0, indices[b].long(), values[b].float())
    flipped = torch.stack([dense[b].flip(-1) if records[b][2] else dense[b] for b in range(B)])

    def build(axes):
        rois = []
        for b, (sw, sh, _, top, left, ch, cw) in enumerate(records):
            t, l, bo, r = top / sh, left / sw, (top + ch) / sh, (left + cw) / sw
            if axes == "official":
                box = [t * S - 0.5, l * S - 0.5, bo * S - 0.5, r * S - 0.5]  # coords · size(3) − 0.5, read as (x1, y1, x2, y2)
            else:
                box = [l * S - 0.5, t * S - 0.5, r * S - 0.5, bo * S - 0.5]
            rois.append([float(b)] + box)
        rois = torch.tensor(rois, dtype=torch.float32)
        tok = roi_align(flipped, rois, output_size=(L, L), spatial_scale=1.0, sampling_ratio=-1, aligned=False)
        cls = roi_align(flipped, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=False)
        t = torch.cat([cls.view(B, C, 1), tok.view(B, C, L * L)], dim=2)  # [B, C, 1+L²]
        return (torch.softmax(t, 1) * on + off).flatten().tolist()

    return {"B": B, "C": C, "K": K, "S": S, "L": L, "smoothing": eps,
            "values": values.flatten().tolist(), "indices": indices.flatten().tolist(),
            "records": [list(r) for r in records], "official": build("official"), "geometric": build("geometric")}


def main():
    gen = torch.Generator().manual_seed(20240611)
    data = {"roi": roi_cases(gen), "targets": targets(gen)}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(data, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
