"""Peak host memory and time of the language-model loss: lm_head + cross-entropy, fused or not.

Each form runs in a fresh process: forward and backward of the loss of ``--tokens`` hidden states
through a [vocab x hidden] lm_head (phi-1's 51200 x 2048 by default), on the CPU. The number is the
rise of the process's peak resident memory over what it held before the loss (weights, inputs).

    python benchmarks/cross_entropy_memory.py --tokens 2048 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

FORMS = ("fused", "unfused")


def run_one(form: str, tokens: int, hidden: int, vocab: int, dtype: str) -> dict:
    import psutil
    import torch

    from megaphi import parallel

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    h = torch.randn(tokens, hidden, dtype=dt, requires_grad=True)
    weight = (0.02 * torch.randn(vocab, hidden)).to(dt).requires_grad_()
    bias = torch.zeros(vocab, dtype=dt, requires_grad=True)
    target = torch.randint(0, vocab, (tokens,))
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if form == "fused":
        loss = parallel.fused_linear_cross_entropy(h, weight, bias, target).sum()
    else:
        logits = torch.nn.functional.linear(h, weight, bias)
        loss = parallel.vocab_parallel_cross_entropy(logits, target, inplace_backward=True).sum()
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(
        form=form,
        tokens=tokens,
        hidden=hidden,
        vocab=vocab,
        dtype=dtype,
        loss=float(loss),
        peak_rise_mib=round((peak - before) / 2**20, 1),
        seconds=round(seconds, 2),
        logits_mib=round(tokens * vocab * torch.finfo(dt).bits / 8 / 2**20, 1),
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=51200)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--form", choices=FORMS, help="run one form in this process (default: each in its own)")
    args = p.parse_args()
    if args.form:
        print(json.dumps(run_one(args.form, args.tokens, args.hidden, args.vocab, args.dtype)), flush=True)
        return 0
    for form in FORMS:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--form", form], capture_output=True, text=True)
        print(out.stdout.strip() or json.dumps({"form": form, "error": out.stderr.strip()[-300:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
