"""How far the detached-plan gradient of the factored transport cost is from the exact (unrolled)
one: cosine between the two gradients w.r.t. (x, y), for the debiased cost that training uses
(model/objectives/transport.py) and for the undebiased cost it replaced.

    .venv/bin/python -m bench.transport_grad

Seeded random unit clouds, float64, r = 16 hubs, eps 0.05, 50 iterations, no early stop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.objectives.transport import factored_transport


def undebiased(x: torch.Tensor, y: torch.Tensor, aux: dict[str, torch.Tensor], r: int) -> torch.Tensor:
    """T(x, y) = mass - sum_k <X^T Q_k, Y^T R_k> / g_k, from the same plans."""
    q, p = aux["q_plan"], aux["r_plan"]  # (n, r), (m, r)
    return (q.sum(0) * p.sum(0) * r).sum() - ((x.T @ q) * (y.T @ p)).sum(0).sum() * r


def clouds(case: str, n: int, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)  # (n, d)
    noise = torch.randn(n, d, generator=gen, dtype=torch.float64)  # (n, d)
    if case == "random":
        return x, F.normalize(noise, dim=-1)
    if case == "shifted":
        shift = torch.zeros(d, dtype=torch.float64)
        shift[0] = 1.0
        return x, F.normalize(noise + shift, dim=-1)
    return x, F.normalize(x + 1.2 * noise / d**0.5, dim=-1)  # "nearby": a noisy copy


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    print("| clouds | n | d | D value | cos D | T value | cos T |\n|---|---|---|---|---|---|---|")
    for case in ("random", "shifted", "nearby"):
        for n, d in ((128, 256), (64, 16)):
            x0, y0 = clouds(case, n, d, gen)
            z = F.normalize(torch.randn(16, d, generator=gen, dtype=torch.float64), dim=-1)  # (r, d)
            grads: dict[tuple[str, bool], torch.Tensor] = {}
            values: dict[str, float] = {}
            for detach in (True, False):
                for kind in ("D", "T"):
                    x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
                    cost, aux = factored_transport(x, y, z, eps=0.05, n_iters=50, detach_plans=detach, tol=0)
                    if kind == "T":
                        cost = undebiased(x, y, aux, 16)
                    values[kind] = float(cost.detach())
                    grads[(kind, detach)] = torch.cat([g.flatten() for g in torch.autograd.grad(cost, [x, y])])
            cos = {k: float(F.cosine_similarity(grads[(k, True)], grads[(k, False)], dim=0)) for k in ("D", "T")}
            print(f"| {case} | {n} | {d} | {values['D']:.4f} | {cos['D']:.3f} | {values['T']:.3f} | {cos['T']:.3f} |")


if __name__ == "__main__":
    main()
