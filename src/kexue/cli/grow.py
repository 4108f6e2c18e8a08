"""``kexue grow``: write a wider and/or deeper checkpoint that computes the same function."""

from __future__ import annotations

import argparse

NAME = "grow"
HELP = "grow a HuggingFace checkpoint (width by k, depth by identity blocks) losslessly; writes OUT and a parity report"
EXAMPLE = "kexue grow path/to/small -o path/to/large --width 2 --depth 2"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a HuggingFace checkpoint folder (config.json + weights)")
    parser.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="folder for the grown checkpoint (must not exist)")
    parser.add_argument("--width", type=int, default=1, help="hidden/feed-forward width factor k (default: 1, unchanged)")
    parser.add_argument("--mode", default="heads", choices=("heads", "head_dim"),
                        help="heads: copy heads, keep head_dim (exact with RoPE; default); head_dim: the article's wider heads")
    parser.add_argument("--depth", type=int, default=1, help="depth factor: insert depth-1 identity blocks after every layer (default: 1)")
    parser.add_argument("--ffn", type=int, default=None, metavar="SIZE",
                        help="feed-forward width of the result (after --width), any size >= the current one (default: unchanged)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="symmetry breaking: zero-sum noise, relative std (keeps the function; e.g. 1.0; default 0: exact copies)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import shutil
    from pathlib import Path

    import torch
    import transformers

    from kexue._shared import check_int, num_layers
    from kexue.cli._common import stderr_console, stdout_console
    from kexue.data import quiet_offline_transformers
    from kexue.growth import widen, widen_ffn
    from kexue.growth.depth import deepen

    check_int("--width", args.width, 1)
    check_int("--depth", args.depth, 1)
    if args.ffn is not None:
        check_int("--ffn", args.ffn, 1)
    if not args.noise >= 0 or args.noise == float("inf"):
        raise ValueError(f"--noise {args.noise} must be a finite number >= 0")
    if args.width == 1 and args.depth == 1 and args.ffn is None:
        raise ValueError("nothing to do: give --width >= 2, --depth >= 2 and/or --ffn SIZE")
    src, out = Path(args.model_dir), Path(args.out)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"MODEL_DIR {src} has no config.json")
    if out.exists():
        raise FileExistsError(f"--out {out} exists; choose a new folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: its parent {out.parent} is not an existing folder")
    quiet_offline_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(src)
        arch = (config.architectures or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        small = (cls or transformers.AutoModel).from_pretrained(src, dtype=torch.float32).eval()
    except Exception as exc:  # a corrupt config, truncated or missing weights: the user's input, not a bug
        raise ValueError(f"MODEL_DIR {src}: cannot load the checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None

    def grow(model, noise=args.noise):
        if args.width > 1:
            model = widen(model, args.width, mode=args.mode, noise=noise, seed=args.seed)
        if args.ffn is not None:
            model = widen_ffn(model, args.ffn, noise=noise, seed=args.seed + 1)
        if args.depth > 1:
            model = deepen(model, [i for i in range(num_layers(model.config)) for _ in range(args.depth - 1)])
        return model

    large = grow(small)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    try:
        _write(tmp, out, src, small, large, grow, config, args)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed or interrupted run leaves no half-written folder
        raise
    report = json.loads((out / "growth_parity.json").read_text())
    stdout_console().print_json(json.dumps(report))
    stderr_console().print(f"wrote {out} ({report['parameters']['small']:,} -> {report['parameters']['large']:,} parameters)")
    return 0 if report["float64"]["max_abs"] <= 1e-8 else 1


def _write(tmp, out, src, small, large, grow, config, args) -> None:
    """Save the grown model with its parity report into ``tmp``, then rename ``tmp`` to ``out``."""
    import json
    import os
    import shutil

    import torch

    from kexue.growth.parity import float64_norms, max_logit_difference, output_scale

    large.save_pretrained(tmp)
    for extra in src.iterdir():  # tokenizer and other non-weight files travel along
        if extra.is_file() and not extra.name.startswith(("config.json", "model", "pytorch_model")) and not (tmp / extra.name).exists():
            shutil.copy2(extra, tmp / extra.name)

    g = torch.Generator().manual_seed(0)
    probe = {"input_ids": torch.randint(0, config.vocab_size, (2, 16), generator=g)}
    report = {"model": str(src), "width": args.width, "mode": args.mode, "depth": args.depth, "ffn": args.ffn, "noise": args.noise,
              "parameters": {"small": sum(p.numel() for p in small.parameters()), "large": sum(p.numel() for p in large.parameters())}}
    report["float32"] = {"max_abs": max_logit_difference(small, large, probe)}
    report["float32"]["max_rel"] = report["float32"]["max_abs"] / output_scale(small, probe)
    small64 = small.double()
    with float64_norms():
        report["float64"] = {"max_abs": max_logit_difference(small64, grow(small64), probe)}  # same seed: same noise
    (tmp / "growth_parity.json").write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
