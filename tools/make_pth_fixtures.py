#!/usr/bin/python3
"""Writes the small PyTorch checkpoint fixtures used by AllTokens.Tests.Checkpoints.

Run with Debian's interpreter (torch 1.13):  /usr/bin/python3 tools/make_pth_fixtures.py
Output: tests/AllTokens.Tests/fixtures/pth/ (*.pth plus expected.json with exact values).

The fixtures are committed. Never regenerate them to make a test pass: a difference means either
torch's format moved or our reader broke, and both deserve a look.
"""
import argparse
import collections
import json
import math
import os
import sys

import numpy
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "AllTokens.Tests", "fixtures", "pth")
PWNED = "/tmp/alltokens_pwned"

DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def main_state_dict():
    """Every dtype, views with strides and offsets, a parameter and a 0-dim tensor, in a fixed order."""
    sd = collections.OrderedDict()
    sd["f32"] = torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1.0
    sd["f16"] = torch.tensor([[1.5, -2.25], [65504.0, 6.103515625e-05]], dtype=torch.float16)
    sd["bf16"] = torch.tensor([1.0, -3.5, 3.0e38, 1.0e-3], dtype=torch.bfloat16)
    sd["f64"] = torch.tensor([math.pi, -1e-300, 12345.678], dtype=torch.float64)
    sd["i64"] = torch.tensor([1, -2, 2 ** 40, -(2 ** 50)], dtype=torch.int64)
    sd["i32"] = torch.tensor([[7, -8], [2 ** 31 - 1, -(2 ** 31)]], dtype=torch.int32)
    sd["i16"] = torch.tensor([300, -32768, 32767], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True, True])
    # A transposed (non-contiguous) view: stride (1, 4) over a 3x4 storage.
    sd["transposed"] = (torch.arange(12, dtype=torch.float32) - 5.0).reshape(3, 4).t()
    # Two tensors sharing one storage at different offsets, one of them also strided.
    base = torch.arange(20, dtype=torch.float32) * 0.25
    sd["shared_a"] = base[2:8].view(2, 3)
    sd["shared_b"] = base[10:19:3]
    # A column slice: offset 1, stride (4, 1), non-contiguous.
    mat = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    sd["cols"] = mat[:, 1:3]
    sd["param"] = torch.nn.Parameter(torch.tensor([[0.125, -0.5], [2.0, 4.0]]))
    sd["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    sd["empty"] = torch.zeros(0, 3, dtype=torch.float32)
    return sd


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)


def model_state_dicts():
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        # Values that print exactly: multiples of 1/8.
        net.fc.weight.copy_(torch.tensor([[0.125, -0.25, 0.5], [1.0, -2.0, 4.0]]))
        net.fc.bias.copy_(torch.tensor([0.375, -0.625]))
        net.bn.running_mean.copy_(torch.tensor([0.5, -0.5]))
        net.bn.running_var.copy_(torch.tensor([2.0, 3.0]))
        net.bn.num_batches_tracked.fill_(11)
    model = net.state_dict()  # an OrderedDict carrying a _metadata attribute
    ema = collections.OrderedDict((k, v.clone() * 2 if v.is_floating_point() else v.clone() + 100) for k, v in model.items())
    return model, ema


def with_prefix(sd, prefix):
    out = collections.OrderedDict((prefix + k, v) for k, v in sd.items())
    out._metadata = getattr(sd, "_metadata", None)
    return out


def describe(sd):
    rows = []
    for name, t in sd.items():
        t = t.detach()
        values = t.reshape(-1).tolist()
        if t.dtype == torch.bool:
            values = [1 if v else 0 for v in values]
        for v in values:
            if isinstance(v, float):
                assert math.isfinite(v)
        rows.append({"name": name, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "values": values})
    return rows


class Payload:
    """Pickles as a call to os.system. Only ever pickled here, never unpickled."""

    def __reduce__(self):
        return (os.system, ("echo pwned > " + PWNED,))


class EvalPayload:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned > " + PWNED + "')",))


def save(obj, name, legacy=False):
    path = os.path.join(OUT, name)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    print(f"{name}: {os.path.getsize(path)} bytes")


def main():
    assert torch.__version__.startswith("1.13"), "fixtures were made with torch 1.13; keep it that way"
    os.makedirs(OUT, exist_ok=True)
    if os.path.exists(PWNED):
        os.remove(PWNED)

    sd = main_state_dict()
    save(sd, "state_zip.pth")
    save(sd, "state_legacy.pth", legacy=True)

    model, ema = model_state_dicts()
    optimizer = {"state": {0: {"momentum_buffer": torch.tensor([0.5, 0.25])}},
                 "param_groups": [{"lr": 0.1, "momentum": 0.9, "nesterov": False, "params": [0, 1]}]}
    container = {
        "state_dict": with_prefix(model, "module."),
        "epoch": 3,
        "args": argparse.Namespace(lr=0.1, arch="tiny", tags={"a", "b"}, blob=b"\x00\xffraw"),
        "optimizer": optimizer,
        "best_acc": numpy.float64(0.75),
        "device": torch.device("cpu"),
        "dtype": torch.float16,
    }
    save(container, "container.pth")
    save(container, "container_legacy.pth", legacy=True)
    save({"state_dict": with_prefix(model, "module."), "state_dict_ema": with_prefix(ema, "module."), "epoch": 5},
         "container_ema.pth")
    save({"state_dict_ema": with_prefix(ema, "module.")}, "ema_only.pth")

    # Hostile pickles: the reader must treat the globals as inert data and never call them.
    save(Payload(), "malicious.pth")
    save({"weight": torch.tensor([1.0, 2.0]), "payload": EvalPayload(), "other": Payload()}, "malicious_mixed.pth")
    assert not os.path.exists(PWNED)

    expected = {"state": describe(sd), "model": describe(model), "model_ema": describe(ema)}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print("expected.json written;", sys.version.split()[0], "torch", torch.__version__)


if __name__ == "__main__":
    main()
