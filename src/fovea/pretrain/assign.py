"""Labels from cluster centres: each image's L most similar centres by cosine, exactly.

Chunked matrix products keep memory at one (chunk, K) block however many images there are; the
result is exact (no approximate index), most similar first, aligned with the features' order.
L = 1 is UNICOM's single label, L = 8 MLCD's.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def top_centres(
    features: torch.Tensor, centres: torch.Tensor, labels: int, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features and (K, D) centres -> (N, labels) int64 centre ids and their float32 cosines."""
    if features.dim() != 2 or centres.dim() != 2 or features.shape[1] != centres.shape[1]:
        raise ValueError(
            f"features (N, D) and centres (K, D) must share D, got {tuple(features.shape)} and {tuple(centres.shape)}"
        )
    if not 1 <= labels <= centres.shape[0]:
        raise ValueError(f"labels must be between 1 and the {centres.shape[0]} centres, got {labels}")
    unit = torch.nn.functional.normalize(centres.float(), dim=1).T  # (D, K)
    ids, sims = [], []
    for start in range(0, features.shape[0], chunk):
        block = torch.nn.functional.normalize(features[start : start + chunk].float(), dim=1) @ unit
        values, index = block.topk(labels, dim=1)  # sorted, most similar first
        ids.append(index)
        sims.append(values)
    return torch.cat(ids), torch.cat(sims)
