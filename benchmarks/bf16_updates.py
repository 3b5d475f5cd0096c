"""How many AdamW updates does pure bf16 (``precision: bf16``) lose? (CPU, a few seconds)

    python benchmarks/bf16_updates.py

One million weights drawn N(0, 0.02²) (the initialisation scale of Llama-2 and BERT), 10 AdamW
steps with random N(0, 1) gradients, once in float32 and once with weights, gradients and moments
in bfloat16. Prints the share of bf16 weights that never moved and the relative error of the bf16
update against the float32 one, at the paper's decoder lr (5e-6) and two larger ones.
"""

import torch


def main() -> None:
    torch.manual_seed(0)
    for lr in (5e-6, 2e-5, 1e-4):
        w = torch.randn(1_000_000) * 0.02
        delta = {}
        for dtype in (torch.float32, torch.bfloat16):
            p = torch.nn.Parameter(w.to(dtype).clone())
            start = p.detach().clone()
            opt = torch.optim.AdamW([p], lr=lr, weight_decay=0.0)
            g = torch.Generator().manual_seed(1)
            for _ in range(10):
                p.grad = torch.randn(1_000_000, generator=g).to(dtype)
                opt.step()
            delta[dtype] = p.detach().float() - start.float()
        lost = (delta[torch.bfloat16] == 0).float().mean().item()
        err = ((delta[torch.bfloat16] - delta[torch.float32]).norm() / delta[torch.float32].norm()).item()
        print(f"lr {lr:g}: {lost:.1%} of the bf16 weights never moved in 10 steps; "
              f"|Δ_bf16 − Δ_fp32| / |Δ_fp32| = {err:.2f}")


if __name__ == "__main__":
    main()
