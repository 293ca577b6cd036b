#!/usr/bin/python3
"""PyTorch side of the AllTokens-vs-PyTorch benchmark (issue: performance).

Runs the same architectures and the same step as `./alltokens bench` on synthetic data with Debian's
python3-torch and prints one JSON line:
  {"impl": "pytorch", "model": ..., "train_images_per_s": ..., "infer_images_per_s": ..., "median_step_s": ..., "peak_rss_mb": ...}

Models are our own PyTorch transcriptions from shared/reference (LVVIT.md §3, T2T_VIT.md §3); LV-ViT reuses the
classes of tools/make_lvvit_fixtures.py. The LV-ViT train step is the token-labeling step (MixToken box, dense soft
targets, cls + 0.5·token soft CE), as our bench does; other models use cross-entropy. Optimiser: AdamW (timm settings).
--bf16 runs forward and loss under torch.autocast("cpu", torch.bfloat16), PyTorch's own mixed precision (fp32 weights,
gradients and AdamW), to set beside `./alltokens bench --bf16` (bench/bf16.sh with IMPL=pytorch).
"""
import argparse, contextlib, json, math, os, resource, statistics, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from make_lvvit_fixtures import LVViT, Block  # noqa: E402  (our own transcription)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in fp32 under CPU autocast (--bf16), the policy CUDA autocast has for layer_norm: 1.13's CPU
    autocast leaves layer_norm out, and the Performer's bf16 residual then meets the fp32 weight and raises."""

    def forward(self, x):
        if torch.is_autocast_cpu_enabled():
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class TokenPerformer(nn.Module):
    """T2T_VIT.md §3.2: single-head Performer, k/q/v split order, 32 orthogonal random features, residual through v."""

    def __init__(self, dim, in_dim, kernel_ratio=0.5):
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Linear(dim, 3 * in_dim)
        self.dp = nn.Dropout(0.1)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(in_dim)
        self.epsilon = 1e-8
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim), nn.Dropout(0.1))
        self.m = int(in_dim * kernel_ratio)
        w = torch.randn(self.m, in_dim)
        self.w = nn.Parameter(nn.init.orthogonal_(w) * math.sqrt(self.m), requires_grad=False)

    def features(self, z):
        zd = (z * z).sum(dim=-1, keepdim=True).repeat(1, 1, self.m) / 2
        wz = torch.einsum("bti,mi->btm", z.float(), self.w)
        return torch.exp(wz - zd) / math.sqrt(self.m)

    def forward(self, x):
        k, q, v = torch.split(self.kqv(self.norm1(x)), self.emb, dim=-1)
        kp, qp = self.features(k), self.features(q)
        d = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(2)
        kptv = torch.einsum("bin,bim->bnm", v.float(), kp)
        y = torch.einsum("bti,bni->btn", qp, kptv) / (d.repeat(1, 1, self.emb) + self.epsilon)
        y = v + self.dp(self.proj(y))
        return y + self.mlp(self.norm2(y))


def sinusoid(n, d):
    import numpy as np
    pos = np.arange(n)[:, None]
    j = np.arange(d)[None, :]
    table = pos / np.power(10000, 2 * (j // 2) / d)
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


class T2TModule(nn.Module):
    """T2T_VIT.md §3.1: soft split → Performer → re-structurize → soft split → Performer → re-structurize → soft split → project."""

    def __init__(self, e, token_dim=64):
        super().__init__()
        self.ss0 = nn.Unfold(7, stride=4, padding=2)
        self.ss1 = nn.Unfold(3, stride=2, padding=1)
        self.ss2 = nn.Unfold(3, stride=2, padding=1)
        self.a1 = TokenPerformer(3 * 49, token_dim)
        self.a2 = TokenPerformer(token_dim * 9, token_dim)
        self.project = nn.Linear(token_dim * 9, e)

    @staticmethod
    def restructure(x):
        b, n, c = x.shape
        s = int(math.isqrt(n))
        return x.transpose(1, 2).reshape(b, c, s, s)

    def forward(self, x):
        x = self.a1(self.ss0(x).transpose(1, 2))
        x = self.a2(self.ss1(self.restructure(x)).transpose(1, 2))
        return self.project(self.ss2(self.restructure(x)).transpose(1, 2))


class T2TViT(nn.Module):
    """T2T_VIT.md §3.1/§3.4 with Performer T2T layers (module names as the original: tokens_to_token, blocks, norm, head)."""

    def __init__(self, img, classes, e, depth, heads, mlp_ratio, token_dim=64):
        super().__init__()
        self.tokens_to_token = T2TModule(e, token_dim)
        n = (img // 16) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(sinusoid(n + 1, e), requires_grad=False)
        self.blocks = nn.ModuleList([Block(e, heads, mlp_ratio, 1.0) for _ in range(depth)])
        self.norm = LayerNorm(e)
        self.head = nn.Linear(e, classes)

    def forward(self, x):
        x = self.tokens_to_token(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def build(name, img, classes):
    if name == "lvvit_t":
        return LVViT(img, classes, 240, 12, 4, 3.0, 1.0, "conv", 64, True)
    if name == "lvvit_nano":
        return LVViT(img, classes, 128, 4, 4, 3.0, 1.0, "conv", 32, True)
    if name == "t2t_vit_7":
        return T2TViT(img, classes, 256, 7, 4, 2.0)
    if name == "t2t_vit_nano":
        return T2TViT(img, classes, 128, 4, 4, 3.0, token_dim=32)
    raise SystemExit(f"torch_bench: unknown model {name}")


def precision(bf16):
    """The context a forward runs in: CPU autocast to bfloat16 under --bf16, else plain fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def soft_ce(logits, target):
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def breakdown(model, opt, a):
    """Every top-level module (blocks one by one) alone, forward + backward with a gradient of ones, on the input it got
    in one forward of the whole model; then one AdamW step. Parts run in turn, round after round (as bench --breakdown)."""
    parts = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            parts += [(f"{name}.{i}", m) for i, m in enumerate(child)]
        else:
            parts.append((name, child))
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: inputs.setdefault(n, inp[0].detach().clone())) for n, m in parts]
    model.train()
    with torch.no_grad(), precision(a.bf16):
        model.forward_eval(torch.randn(a.batch, 3, a.res, a.res)) if hasattr(model, "forward_eval") else model(torch.randn(a.batch, 3, a.res, a.res))
    for h in hooks:
        h.remove()
    runs = []
    for n, m in parts:
        if n not in inputs:
            continue
        x0 = inputs[n]
        image = x0.dim() == 4 and x0.shape[1] == 3 and x0.shape[2] == a.res

        def run(m=m, x0=x0, image=image):
            x = x0 if image or not x0.is_floating_point() else x0.detach().requires_grad_(True)
            with precision(a.bf16):
                y = m(x)
            if y.requires_grad:
                y.backward(torch.ones_like(y))
            model.zero_grad(set_to_none=True)
        runs.append((n, list(x0.shape), run))
    params = [p for g in opt.param_groups for p in g["params"]]
    fake = [torch.randn_like(p) * 1e-3 for p in params]

    def opt_step():
        for p, g in zip(params, fake):
            p.grad = g
        opt.step()
    runs.append(("optimizer step", [], opt_step))
    times = [[] for _ in runs]
    for r in range(a.warmup + a.steps):
        for i, (_, _, f) in enumerate(runs):
            t0 = time.perf_counter()
            f()
            if r >= a.warmup:
                times[i].append(time.perf_counter() - t0)
    return [{"part": n, "input": shape, "median_s": statistics.median(t)} for (n, shape, _), t in zip(runs, times)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--ce", action="store_true", help="plain cross-entropy step for LV-ViT too (compare with bench --task ce)")
    ap.add_argument("--breakdown", action="store_true", help="also time each top-level part alone, forward + backward (as bench --breakdown)")
    ap.add_argument("--bf16", action="store_true", help="forward and loss under CPU autocast to bfloat16 (PyTorch's mixed precision)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build(a.model, a.res, a.classes)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and p.ndim > 1], "weight_decay": 0.05},
              {"params": [p for p in model.parameters() if p.requires_grad and p.ndim <= 1], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4)
    x = torch.randn(a.batch, 3, a.res, a.res)
    y = torch.randint(0, a.classes, (a.batch,))
    lvvit = isinstance(model, LVViT)
    tl = lvvit and not a.ce
    g = a.res // 16
    if lvvit:
        dense = torch.softmax(torch.randn(a.batch, g * g, a.classes), dim=-1)
        cls_t = torch.softmax(torch.randn(a.batch, a.classes), dim=-1)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with precision(a.bf16):
            loss = step_loss()
        loss.backward()
        opt.step()

    def step_loss():
        if tl:
            lam = torch.rand(1).item()
            cut = int(g * math.sqrt(1 - lam))
            cy, cx = torch.randint(0, g, (2,)).tolist()
            t, b = max(cy - cut // 2, 0), min(cy + cut // 2, g)
            l, r = max(cx - cut // 2, 0), min(cx + cut // 2, g)
            cls, aux = model.forward_train(x, (t, l, b, r))
            lam2 = 1 - (b - t) * (r - l) / (g * g)
            tc = lam2 * cls_t + (1 - lam2) * cls_t.flip(0)
            return soft_ce(cls, tc) + 0.5 * soft_ce(aux.reshape(-1, a.classes), dense.reshape(-1, a.classes))
        if lvvit:
            return F.cross_entropy(model.forward_eval(x), y, label_smoothing=0.1)
        return F.cross_entropy(model(x), y, label_smoothing=0.1)

    model.train()
    times = []
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        train_step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / a.steps
    model.eval()
    infer = []
    with torch.no_grad(), precision(a.bf16):
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            model.forward_eval(x) if lvvit else model(x)
            if i >= a.warmup:
                infer.append(time.perf_counter() - t0)
    med, imed = statistics.median(times), statistics.median(infer)
    parts = breakdown(model, opt, a) if a.breakdown else None
    print(json.dumps({
        "impl": "pytorch", "version": torch.__version__, "model": a.model, "res": a.res, "batch": a.batch, "threads": a.threads,
        "bf16": a.bf16,
        "train_images_per_s": a.batch / med, "infer_images_per_s": a.batch / imed, "median_step_s": med,
        "median_infer_s": imed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "page_faults_per_step": faults,
        **({"breakdown": parts} if parts is not None else {}),
    }))


if __name__ == "__main__":
    main()
