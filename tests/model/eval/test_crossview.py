"""Leave-one-view-out cross-view retrieval against hand-computed cases.

The model is a stub whose `fuse` is the plain normalised sum of the kept views, so every score
below can be worked out by hand; the function under test decides which views each target keeps.
"""

from __future__ import annotations

import numpy as np
import torch

from model.eval.crossview import leave_one_view_out

TITLE, IMAGE = 0, 1  # indices in model.config.VIEW_TYPES


class SumFusion:
    """fuse(z, keep) = normalize(sum of kept slots): the reference fusion for these cases."""

    def fuse(self, z: torch.Tensor, keep: torch.Tensor, slot_types: torch.Tensor, index_only: bool = True) -> torch.Tensor:
        s = (z * keep.unsqueeze(-1).float()).sum(1)  # (n, d)
        return torch.nn.functional.normalize(s, dim=-1)


def unit(*xs: float) -> list[float]:
    v = np.asarray(xs, dtype=np.float32)
    return (v / np.linalg.norm(v)).tolist()


def test_a_listing_cannot_find_itself_through_the_held_out_view() -> None:
    # Listing 0's title equals its own image direction only through the title: the target of
    # listing 0 for the title query is fused WITHOUT the title, i.e. its image e2. Listing 1's
    # image is e1, exactly listing 0's title: the title query of listing 0 ranks listing 1 first.
    z = torch.tensor([
        [unit(1, 0, 0), unit(0, 1, 0)],   # listing 0: title e1, image e2
        [unit(0, 0, 1), unit(1, 0, 0)],   # listing 1: title e3, image e1
        [unit(0, 1, 0), unit(0, 0, 1)],   # listing 2: title e2, image e3
    ])  # (n=3, S=2, d=3)
    present = np.ones((3, 2), dtype=bool)
    out = leave_one_view_out(SumFusion(), z, present, (TITLE, IMAGE), ks=(1, 2, 3))

    # Title queries against image-only targets: q0=e1 vs targets (e2, e1, e3) -> listing 1 first,
    # own target e2 scores 0, tied with listing 2's e3: ties count in the item's favour (rank 1).
    # q1=e3 vs targets -> listing 2 first, own e1 scores 0 (tied with listing 0): rank 1.
    # q2=e2 vs targets -> listing 0 first, own e3 scores 0: rank 1.
    assert out["title"]["recall@1"] == 0.0
    assert out["title"]["recall@2"] == 1.0
    assert out["title"]["n_queries"] == 3.0
    # Image queries against title-only targets are the same permutation the other way round.
    assert out["image"]["recall@1"] == 0.0 and out["image"]["recall@2"] == 1.0


def test_aligned_views_are_found_at_rank_one_and_missing_views_are_not_queries() -> None:
    # Each listing's title and image point the same way: every query finds its own listing.
    base = torch.eye(4)  # (4, 4)
    z = torch.stack([base, base], dim=1)  # (n=4, S=2, d=4)
    present = np.ones((4, 2), dtype=bool)
    present[3, IMAGE] = False  # listing 3 has no image: it issues no image query
    z[3, IMAGE] = 0.0
    out = leave_one_view_out(SumFusion(), z, present, (TITLE, IMAGE), ks=(1,))
    assert out["image"] == {"recall@1": 1.0, "n_queries": 3.0}
    # Listing 3's title query: its target without the title is empty (zero vector, score 0) and
    # every other target scores 0 too: a tie, counted as found.
    assert out["title"]["n_queries"] == 4.0 and out["title"]["recall@1"] == 1.0


def test_a_view_type_held_by_fewer_than_two_listings_is_not_scored() -> None:
    z = torch.randn(3, 2, 4)
    present = np.array([[True, True], [True, False], [True, False]])
    out = leave_one_view_out(SumFusion(), z, present, (TITLE, IMAGE))
    assert "image" not in out and "title" in out
