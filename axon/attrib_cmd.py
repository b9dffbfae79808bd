"""`axon explain` (saliency maps) and `axon attack` (adversarial examples): a trained model's input
gradients, compiled (`passes/autodiff.vjp` of its evaluation graph), put to work by
`runtime/attribution.py`.

    axon explain FILE --checkpoint CK --method gradient|integrated|smoothgrad [--count K] --out DIR
    axon attack FILE --checkpoint CK --method fgsm|pgd --eps E [--steps N --step-size A] --out DIR

explain writes DIR/saliency.png (each input beside its map) and DIR/saliency.npz (inputs, maps, targets);
attack writes DIR/attack.png (original, perturbation, adversarial), DIR/attack.json (clean and adversarial
accuracy over the validation split) and DIR/attack.npz.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from axon.ir import AxonError

METHODS = ("gradient", "integrated", "smoothgrad", "attention")
ATTACKS = ("fgsm", "pgd")


class Gradients:
    """A model's compiled input gradient: `self(x, dout) -> (output, d(sum dout*output)/dx)` for the
    model output (saliency) or its loss (attacks), labels fed from `self.labels`."""

    def __init__(self, setup, params: dict[str, torch.Tensor], of: str):
        from axon.driver import executable, optimize
        from axon.passes.autodiff import vjp
        from axon.trainer import SEED_INPUT

        self.setup, self.of = setup, of
        self.input = setup.binding.inputs
        graph, _ = optimize(vjp(setup.graph, [self.input], outputs=[of]), out=lambda *a, **k: None)
        self.exe = executable(graph, setup.device)
        self.params = {k: v.to(self.exe.device) for k, v in params.items() if k in graph.params}
        self.labels: torch.Tensor | None = None
        self.seed = SEED_INPUT if SEED_INPUT in graph.inputs else None

    def __call__(self, x: torch.Tensor, dout: torch.Tensor):
        b = self.setup.binding
        labels = self.labels if self.labels is not None and len(self.labels) == len(x) else \
            torch.zeros(len(x), dtype=b.label_dtype)
        feeds = {self.input: x.to(self.exe.device), b.labels: labels.to(b.label_dtype).to(self.exe.device),
                 f"dout.{self.of}": dout.to(self.exe.device)}
        if self.seed:
            feeds[self.seed] = torch.tensor(0, dtype=torch.int64, device=self.exe.device)
        out = self.exe(feeds, self.params)
        return out[self.of], out[f"grad.{self.input}"]


def _setup(args):
    from axon import ledger
    from axon.api import fitting_weights
    from axon.quantize_cmd import _origin

    run = _origin(args.checkpoint)
    setup = ledger.Setup.make(args.file, args.model, run.get("hparams"), run.get("seed"), args.batch or
                              run.get("batch"), args.device)
    if setup.validation is None:
        raise AxonError(f"{args.file}: explain and attack work on the train block's validation data, and "
                        f"this model has none")
    return setup, fitting_weights(setup.graph, args.checkpoint)


def explain(args) -> int:
    from axon import data as datasets
    from axon.runtime import attribution as A

    setup, params = _setup(args)
    if args.method == "attention":
        return attention_maps(args, setup, params)
    grads = Gradients(setup, params, setup.binding.output)
    split = setup.validation
    n = min(args.count, datasets.num_examples(split))
    x, y = split["inputs"][:n], split["labels"][:n]
    grads.labels = y
    logits, _ = grads(x, torch.zeros(_out_shape(setup, n)))
    target = logits.argmax(-1).cpu() if args.target == "predicted" else y
    dout = A.one_hot(target, logits.shape[-1], logits.cpu())
    if args.method == "gradient":
        maps = A.gradient(grads, x, dout)
    elif args.method == "integrated":
        maps = A.integrated(grads, x, dout, steps=args.steps)
    else:
        maps = A.smoothgrad(grads, x, dout, samples=args.samples, seed=args.seed)
    maps = maps.detach().cpu()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "saliency.npz", inputs=x.numpy(), maps=maps.numpy(), targets=target.numpy(),
             labels=y.numpy())
    _plot_pairs(out / "saliency.png", x, maps, target, y, f"{setup.graph.name}: {args.method} saliency")
    print(f"{args.method} saliency of {n} validation example(s) ({args.target} class); written: "
          f"{out / 'saliency.png'}, {out / 'saliency.npz'}")
    return 0


def attack(args) -> int:
    from axon import data as datasets
    from axon.runtime import attribution as A

    if not args.eps > 0 or not math.isfinite(args.eps):
        raise AxonError(f"--eps must be a positive number, got {args.eps}")
    setup, params = _setup(args)
    grads = Gradients(setup, params, "loss")
    split = setup.validation
    lo, hi = float(split["inputs"].min()), float(split["inputs"].max())  # the data's range
    clean = adv_correct = total = 0
    shown = None
    for start in range(0, datasets.num_examples(split), setup.batch):
        x, y = split["inputs"][start:start + setup.batch], split["labels"][start:start + setup.batch]
        grads.labels = y
        one = torch.ones(())
        if args.method == "fgsm":
            adv = A.fgsm(grads, x, one, args.eps, lo, hi)
        else:
            adv = A.pgd(grads, x, one, args.eps, args.steps, args.step_size, lo, hi)
        clean += _correct(setup, params, x, y)
        adv_correct += _correct(setup, params, adv, y)
        total += len(y)
        if shown is None:
            shown = (x[:8], adv[:8].detach().cpu(), y[:8])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": setup.graph.name, "method": args.method, "eps": args.eps, "steps": args.steps,
              "examples": total, "clean_acc": clean / total, "adversarial_acc": adv_correct / total,
              "range": [lo, hi]}
    from axon.codegen.files import atomic_write

    atomic_write(out / "attack.json", json.dumps(record, indent=1) + "\n")
    x, adv, y = shown
    np.savez(out / "attack.npz", inputs=x.numpy(), adversarial=adv.numpy(), labels=y.numpy())
    _plot_attack(out / "attack.png", x, adv, y, f"{setup.graph.name}: {args.method}, eps {args.eps}")
    print(f"{args.method} eps {args.eps}: accuracy {clean / total:.2%} clean -> {adv_correct / total:.2%} "
          f"adversarial ({total} validation examples); written: {out / 'attack.png'}, {out / 'attack.json'}")
    return 0


def attention_probabilities(graph):
    """The graph with each attention's probabilities as extra outputs `attention.<k>` (in the graph's
    order: layer by layer): the softmax over keys of a [batch, heads, queries, keys] score tensor."""
    from axon.ir import GraphBuilder, OpKind

    found = [n for n in graph.nodes if n.op == OpKind.DIV and len(n.shape) == 4
             and n.inputs[0].op == OpKind.EXP and n.shape[-1] == n.shape[-2]]
    if not found:
        raise AxonError(f"{graph.name} has no attention (a softmax over a [batch, heads, queries, keys] "
                        f"score tensor) to draw")
    b, mapping = GraphBuilder.extending(graph)
    for k, node in enumerate(found):
        b.output(f"attention.{k}", mapping[node])
    return b.build(), len(found)


def attention_maps(args, setup, params) -> int:
    """For a model with attention (examples/gpt.axon): each layer's and head's attention over the first
    validation sequence, as a grid of heat maps labelled with its tokens, and the arrays."""
    from axon.driver import executable
    from axon.trainer import SEED_INPUT

    graph, layers = attention_probabilities(setup.graph)
    exe = executable(graph, setup.device)
    split = setup.validation
    x = split["inputs"][:1]
    feeds = setup.binding.feed({"inputs": x, "labels": split["labels"][:1]})
    if SEED_INPUT in graph.inputs:
        feeds[SEED_INPUT] = torch.tensor(0, dtype=torch.int64)
    out = exe({k: v.to(exe.device) for k, v in feeds.items()},
              {k: v.to(exe.device) for k, v in params.items() if k in graph.params})
    maps = [out[f"attention.{k}"][0].detach().cpu() for k in range(layers)]   # [heads, q, k] each
    itos = (setup.data.info or {}).get("itos")
    tokens = [itos[int(t)] if itos else str(int(t)) for t in x[0]]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "attention.npz", tokens=np.array([int(t) for t in x[0]]),
             **{f"layer{k}": m.numpy() for k, m in enumerate(maps)})
    heads = maps[0].shape[0]
    fig, axes, plt = _figure(layers, heads, size=3.2)
    for li, m in enumerate(maps):
        for h in range(heads):
            ax = axes[li][h]
            ax.imshow(m[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {li}, head {h}", fontsize=7)
            if len(tokens) <= 40:
                shown = [repr(t)[1:-1] for t in tokens]
                ax.set_xticks(range(len(tokens)), shown, fontsize=4, rotation=90)
                ax.set_yticks(range(len(tokens)), shown, fontsize=4)
    fig.suptitle(f"{setup.graph.name}: attention of the first validation sequence (rows: queries)",
                 fontsize=9)
    _save(fig, plt, out_dir / "attention.png")
    print(f"attention of {layers} layer(s) x {heads} head(s) over {len(tokens)} tokens; written: "
          f"{out_dir / 'attention.png'}, {out_dir / 'attention.npz'}")
    return 0


def _out_shape(setup, n: int) -> tuple:
    from axon.ir.shapes import concrete

    node = setup.graph.outputs[setup.binding.output]
    return concrete(node.shape, {**setup.sizes(setup.graph), "batch": n})


def _correct(setup, params, x, y) -> int:
    from axon.trainer import validate

    exe = _Cache.exe(setup)
    metrics = validate(exe, {k: v.to(exe.device) for k, v in params.items() if k in setup.graph.params},
                       {"inputs": x, "labels": y}, setup.binding, setup.batch)
    return round(metrics.get("acc", 0.0) * len(y))


class _Cache:
    _exe = {}

    @classmethod
    def exe(cls, setup):
        from axon.driver import executable

        key = id(setup.graph)
        if key not in cls._exe:
            cls._exe[key] = executable(setup.graph, setup.device)
        return cls._exe[key]


def _image(t: torch.Tensor) -> np.ndarray:
    """An input as a 2-D picture: [1, H, W] or [H, W] as is, a flat square (64 pixels) as its square."""
    a = t.detach().cpu().float().numpy()
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0]
    if a.ndim == 1 and int(math.isqrt(a.size)) ** 2 == a.size:
        return a.reshape(math.isqrt(a.size), -1)
    return a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[-2], -1)


def _figure(rows: int, cols: int, size: float = 1.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes, plt


def _save(fig, plt, path: Path) -> None:
    from axon.codegen.files import atomic_write

    fig.tight_layout()
    try:
        atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def _plot_pairs(path: Path, x, maps, targets, labels, title: str) -> None:
    n = len(x)
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes, plt = _figure(2 * rows, cols)
    for i in range(n):
        r, c = 2 * (i // cols), i % cols
        axes[r][c].imshow(_image(x[i]), cmap="gray")
        axes[r][c].set_title(f"label {int(labels[i])}", fontsize=7)
        heat = np.abs(_image(maps[i]))
        axes[r + 1][c].imshow(heat, cmap="hot")
        axes[r + 1][c].set_title(f"map, class {int(targets[i])}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, plt, path)


def _plot_attack(path: Path, x, adv, labels, title: str) -> None:
    n = len(x)
    fig, axes, plt = _figure(3, n)
    for i in range(n):
        rows = ((x[i], "original", "gray"), (adv[i] - x[i], "perturbation", "bwr"),
                (adv[i], "adversarial", "gray"))
        for r, (img, name, cmap) in enumerate(rows):
            pic = _image(img)
            span = float(np.abs(pic).max()) or 1.0
            axes[r][i].imshow(pic, cmap=cmap, **({"vmin": -span, "vmax": span} if r == 1 else {}))
            axes[r][i].set_title(f"{name}" + (f" ({int(labels[i])})" if r == 0 else ""), fontsize=6)
    fig.suptitle(title, fontsize=9)
    _save(fig, plt, path)


def add_parsers(sub) -> None:
    e = sub.add_parser("explain", help="saliency maps of a trained model's predictions (input gradients)")
    a = sub.add_parser("attack", help="adversarial examples against a trained model (FGSM, PGD)")
    for p in (e, a):
        p.add_argument("file", help="an .axon model with a train block")
        p.add_argument("--model", default=None)
        p.add_argument("--checkpoint", required=True, metavar="CK", help="the trained weights")
        p.add_argument("--out", required=True, metavar="DIR")
        p.add_argument("--batch", type=int, default=None)
        p.add_argument("--device", default=None)
        p.add_argument("--steps", type=int, default=None)
    e.add_argument("--method", default="gradient", choices=METHODS)
    e.add_argument("--count", type=int, default=8, help="validation examples to explain (default 8)")
    e.add_argument("--target", default="predicted", choices=("predicted", "label"),
                   help="the class whose logit is explained (default: the predicted one)")
    e.add_argument("--samples", type=int, default=16, help="smoothgrad: noisy copies (default 16)")
    e.add_argument("--seed", type=int, default=0)
    a.add_argument("--method", default="fgsm", choices=ATTACKS)
    a.add_argument("--eps", type=float, required=True, help="the perturbation's L-infinity size")
    a.add_argument("--step-size", type=float, default=None,
                   help="pgd: each step's size (default 2.5 eps / steps)")


def defaults(args) -> None:
    if args.steps is None:
        args.steps = 32 if getattr(args, "method", "") == "integrated" else 10
    if args.steps < 1:
        raise AxonError(f"--steps must be at least 1, got {args.steps}")
