"""Rotary on one fused QKV projection, forward + backward through q, k and v: the forms side by side.

One phi-1 layer's projection (1 x 2048 x 3 x 32 x 64, fp32, one CPU thread), best of ``--repeats``.
``--before FILE`` adds the in-place ``rotate_qk_`` of an older megaphi/model/rotary.py, e.g.
``git show bd01cad:megaphi/model/rotary.py > /tmp/rotary_before.py``.

    python benchmarks/rotary_qkv.py --before /tmp/rotary_before.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from bench_common import load_module
from megaphi.model.rotary import RotaryEmbedding, apply_rotary, rotary_qkv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--before", help="an older rotary.py with rotate_qk_ (the in-place form)")
    args = p.parse_args()
    torch.set_num_threads(1)
    batch, seq, heads, head_dim = 1, 2048, 32, 64
    cos, sin = RotaryEmbedding(head_dim // 2, seq, 1e4).for_range(0, seq, torch.device("cpu"), torch.float32)
    projection = torch.randn(batch, seq, 3 * heads * head_dim, requires_grad=True)
    weights = torch.randn(batch, seq, 3, heads, head_dim)

    def composite(qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v = qkv.unbind(2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    forms: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, ...]]] = {
        "no rotary (unbind only)": lambda qkv: qkv.unbind(2),
        "composite": composite,
    }
    if args.before:
        before = load_module(args.before, "rotary_before")
        forms["in place on the projection (before)"] = lambda qkv: before.rotate_qk_(qkv, cos, sin).unbind(2)
    forms["fresh q/k (rotary_qkv)"] = lambda qkv: rotary_qkv(qkv, cos, sin)
    for name, form in forms.items():
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            q, k, v = form((projection * 1.0).view(batch, seq, 3, heads, head_dim))
            torch.stack([(t * weights[:, :, i]).sum() for i, t in enumerate((q, k, v))]).sum().backward()
            best = min(best, time.perf_counter() - start)
        print(f"{name}: {1000 * best:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
