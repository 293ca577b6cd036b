#!/usr/bin/python3
"""Reference values for our AdamW/SGD/clip_grad_norm_ (tests/AllTokens.Tests/Training/OptimizerTests.cs).

Run with Debian's torch 1.13: /usr/bin/python3 tools/make_optimizer_fixtures.py
Writes tests/AllTokens.Tests/fixtures/training/optimizers.json: initial parameters, the gradient fed at each
step, the lr of each step, and the parameters after every step, for two parameter groups (decay / no decay).
Inputs are stored too, so the C# test needs no shared RNG.
"""
import json
import math
import os

import torch

torch.manual_seed(0)
STEPS = 5
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "AllTokens.Tests", "fixtures", "training", "optimizers.json")


def inputs():
    w = torch.randn(3, 4, dtype=torch.float32)
    b = torch.randn(4, dtype=torch.float32)
    grads = [(torch.randn(3, 4) * 0.5, torch.randn(4) * 0.5) for _ in range(STEPS)]
    return w, b, grads


def lrs(base):
    return [base * (1 - 0.15 * k) for k in range(STEPS)]


def run(make_opt, w0, b0, grads, base_lr, clip=None):
    w = torch.nn.Parameter(w0.clone())
    b = torch.nn.Parameter(b0.clone())
    opt = make_opt([{"params": [w], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}])
    out = []
    for k, (gw, gb) in enumerate(grads):
        lr = lrs(base_lr)[k]
        for g in opt.param_groups:
            g["lr"] = lr
        w.grad = gw.clone()
        b.grad = gb.clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([w, b], clip)
        opt.step()
        out.append({"w": w.detach().flatten().tolist(), "b": b.detach().flatten().tolist()})
    return out


def main():
    w0, b0, grads = inputs()
    cases = {
        "adamw": run(lambda g: torch.optim.AdamW(g, betas=(0.9, 0.999), eps=1e-8), w0, b0, grads, 1e-2),
        "adamw_clip": run(lambda g: torch.optim.AdamW(g, betas=(0.85, 0.99), eps=1e-6), w0, b0, grads, 1e-2, clip=0.7),
        "sgd": run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), w0, b0, grads, 0.1),
        "sgd_nesterov": run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True), w0, b0, grads, 0.1),
    }
    data = {
        "torch": torch.__version__,
        "w0": w0.flatten().tolist(), "b0": b0.flatten().tolist(),
        "grads": [{"w": gw.flatten().tolist(), "b": gb.flatten().tolist()} for gw, gb in grads],
        "lrs": {"adamw": lrs(1e-2), "sgd": lrs(0.1)},
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(data, f, indent=1)
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
