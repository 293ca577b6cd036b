#!/usr/bin/python3
"""Writes small LV-ViT parity fixtures for the C# tests (run with Debian's python3-torch 1.13).

The model below is our own PyTorch transcription of the official architecture as described in
shared/reference/LVVIT.md §3 (tlt/models/lvvit.py + layers.py of zihangJiang/TokenLabeling): same module
names, same state-dict keys, same arithmetic order. It is shrunk (tiny widths, 32 px) so the weights fit
in a committed fixture. Outputs:
  fixtures/lvvit/<name>.pth          genuine torch.save zip state dict
  fixtures/lvvit/<name>.json         config, input, eval logits, train outputs (with a MixToken box)
Fixtures are never regenerated to make a test pass.
"""
import json, math, os, sys
import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "AllTokens.Tests", "fixtures", "lvvit")


class Mlp(nn.Module):
    def __init__(self, d, hid):
        super().__init__()
        self.fc1 = nn.Linear(d, hid)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hid, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.scale = (d // heads) ** -0.5
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, d, heads, mlp_ratio, skip_lam):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = Mlp(d, int(d * mlp_ratio))
        self.skip_lam = skip_lam

    def forward(self, x):
        x = x + self.attn(self.norm1(x)) / self.skip_lam
        return x + self.mlp(self.norm2(x)) / self.skip_lam


class Stem(nn.Module):
    def __init__(self, c, d):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.proj = nn.Conv2d(c, d, 8, 8)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.proj(x)


class Naive(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Conv2d(3, d, 16, 16)

    def forward(self, x):
        return self.proj(x)


class LVViT(nn.Module):
    def __init__(self, img, classes, d, depth, heads, mlp_ratio, skip_lam, stem, stem_c, aux):
        super().__init__()
        self.grid = img // 16
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2 + 1, d))
        self.patch_embed = Stem(stem_c, d) if stem == "conv" else Naive(d)
        self.blocks = nn.ModuleList([Block(d, heads, mlp_ratio, skip_lam) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)
        self.aux = aux
        if aux:
            self.aux_head = nn.Linear(d, classes)

    def tokens(self, x, box=None):
        x = self.patch_embed(x)
        if box is not None:
            t, l, b, r = box
            m = x.clone()
            m[:, :, t:b, l:r] = x.flip(0)[:, :, t:b, l:r]
            x = m
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_eval(self, x):
        t = self.tokens(x)
        out = self.head(t[:, 0])
        if self.aux:
            out = out + 0.5 * self.aux_head(t[:, 1:]).max(1)[0]
        return out

    def forward_train(self, x, box):
        t = self.tokens(x, box)
        cls = self.head(t[:, 0])
        aux = self.aux_head(t[:, 1:])
        b, n, c = aux.shape
        aux = aux.reshape(b, self.grid, self.grid, c)
        tt, l, bb, r = box
        un = aux.clone()
        un[:, tt:bb, l:r, :] = aux.flip(0)[:, tt:bb, l:r, :]
        return cls, un.reshape(b, n, c)


CASES = {
    # name: (img, classes, d, depth, heads, mlp_ratio, skip_lam, stem, stem_c, aux)
    "tiny_lvvit": (32, 7, 24, 2, 2, 3.0, 2.0, "conv", 8, True),
    "tiny_lvvit_noaux": (32, 5, 16, 1, 2, 3.0, 1.0, "conv", 4, False),
    "tiny_vit_naive": (32, 5, 16, 2, 4, 3.0, 1.0, "naive", 0, False),
    # 64 px: 4x4 tokens, so the batch of 4 has 68 token rows and our linears take their oneDNN (1x1 convolution) path.
    "small_lvvit_64": (64, 6, 32, 2, 2, 3.0, 2.0, "conv", 8, True),
}


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def main():
    os.makedirs(OUT, exist_ok=True)
    only = set(sys.argv[1:])  # optional: regenerate just these cases
    for i, (name, cfg) in enumerate(CASES.items()):
        if only and name not in only:
            continue
        torch.manual_seed(1234 + i)
        m = LVViT(*cfg)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.2)
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.1)
                    mod.running_var.uniform_(0.5, 1.5)
                    mod.num_batches_tracked.fill_(17)
        img = cfg[0]
        # Deterministic input by formula (kept out of the JSON): x_i = sin(0.37 i)·cos(0.011 i), i the flat index,
        # computed in float64 and cast to float32.
        idx = torch.arange(4 * 3 * img * img, dtype=torch.float64)
        x = (torch.sin(0.37 * idx) * torch.cos(0.011 * idx)).float().reshape(4, 3, img, img)
        m.eval()
        with torch.no_grad():
            logits = m.forward_eval(x)
        rec = {"config": dict(zip(["img", "classes", "embed_dim", "depth", "heads", "mlp_ratio", "skip_lam", "stem", "stem_channels", "aux"], cfg)),
               "keys": list(m.state_dict().keys()),
               "input_shape": list(x.shape), "input_formula": "sin(0.37*i)*cos(0.011*i)", "logits": flat(logits)}
        # Save before the training forward below: it updates the BatchNorm running statistics.
        torch.save(m.state_dict(), os.path.join(OUT, name + ".pth"))
        if cfg[-1]:
            g = img // 16
            box = (0, 1, 2, 2) if g == 2 else (1, 0, 3, 2)  # (top, left, bottom, right) on the token grid
            m.train()
            cls, aux = m.forward_train(x, box)
            rec.update({"box": list(box), "train_cls": flat(cls), "train_aux": flat(aux), "train_aux_shape": list(aux.shape)})
        with open(os.path.join(OUT, name + ".json"), "w") as f:
            json.dump(rec, f)
        print(name, sum(p.numel() for p in m.parameters()), "params")


if __name__ == "__main__":
    main()
