"""RICE's region attention: a region's embedding depends on the tokens inside it and on nothing
outside; boxes and masks become patch visibility; N regions are sampled as the paper says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fovea.pretrain.regions import (
    RegionConfig,
    RegionLayers,
    box_visibility,
    mask_visibility,
    sample_regions,
)


@pytest.mark.parametrize("layers", [1, 3])
def test_a_region_sees_its_tokens_and_nothing_outside(layers):
    torch.manual_seed(0)
    model = RegionLayers(RegionConfig(layers=layers), width=32, heads=4, eps=1e-6).eval()
    tokens = torch.randn(2, 16, 32)  # a 4x4 grid
    boxes = torch.tensor([[0, 0, 28, 28], [28, 0, 56, 56], [10, 40, 20, 50]])  # pixels of a 56x56 image
    visible = box_visibility(boxes, (56, 56), (4, 4))[None].expand(2, -1, -1)
    before = model(tokens, visible)
    outside = tokens.clone()
    outside[:, ~visible[0, 0]] = torch.randn_like(outside[:, ~visible[0, 0]])
    after = model(outside, visible)
    assert torch.equal(after[:, 0], before[:, 0])  # region 0: untouched
    assert not torch.allclose(after[:, 1], before[:, 1])  # region 1 overlaps what changed
    inside = tokens.clone()
    inside[:, visible[0, 0]] += torch.randn_like(
        inside[:, visible[0, 0]]
    )  # not a constant: LayerNorm removes that
    assert not torch.allclose(model(inside, visible)[:, 0], before[:, 0])


def test_boxes_see_the_patches_whose_centre_they_hold():
    visible = box_visibility(torch.tensor([[0, 0, 28, 56], [30, 30, 31, 31]]), (56, 56), (4, 4)).view(2, 4, 4)
    assert visible[0, :, :2].all() and not visible[0, :, 2:].any()  # the left half
    assert visible[1].sum() == 1 and visible[1, 2, 2]  # a tiny box: the patch holding its centre


def test_masks_see_what_they_cover_and_never_nothing():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :] = True  # the top half
    masks[1, 5, 5] = True  # one pixel
    visible = mask_visibility(masks, (2, 2)).view(2, 2, 2)
    assert visible[0].tolist() == [[True, True], [False, False]]
    assert visible[1].tolist() == [[False, False], [False, True]]


def test_n_regions_are_a_random_n_or_all_resampled_with_replacement():
    g = torch.Generator().manual_seed(0)
    many = sample_regions(25, 10, g)
    assert len(many) == 10 and len(set(many.tolist())) == 10 and many.max() < 25
    few = sample_regions(3, 10, g)
    assert len(few) == 10 and set(few.tolist()) == {0, 1, 2}
    again = sample_regions(25, 10, torch.Generator().manual_seed(0))
    assert torch.equal(again, many)  # seeded: the same regions on a resumed run
    with pytest.raises(ValueError, match="no regions"):
        sample_regions(0, 10)


def test_a_blind_region_is_refused():
    model = RegionLayers(RegionConfig(), width=8, heads=2)
    with pytest.raises(ValueError, match="sees no token"):
        model(torch.randn(1, 4, 8), torch.zeros(1, 2, 4, dtype=torch.bool))


@pytest.mark.parametrize("positives", [1, 10], ids=["object-eq3", "ocr-eq4"])
def test_region_losses_are_the_papers_formulas(positives):
    """RICE's object-region loss (Eq. 3: one positive centre) and OCR-region loss (Eq. 4: the
    region text's token ids, up to M = 10 positives) are MLCD's separated form, margin 0.3, scale
    64, on the region embeddings: fovea's `mlcd_loss` equals the formula written out here."""
    from fovea.pretrain.losses import mlcd_loss

    torch.manual_seed(1)
    regions = RegionLayers(RegionConfig(), width=16, heads=2)(
        torch.randn(2, 9, 16), torch.ones(2, 3, 9, dtype=torch.bool)
    ).flatten(0, 1)  # (B*N, D): every region is a sample of the loss
    centres = torch.randn(40, 16)
    cosine = F.normalize(regions, dim=1) @ F.normalize(centres, dim=1).T
    labels = torch.stack([torch.randperm(40)[:positives] for _ in range(len(cosine))])
    s, m = 64.0, 0.3
    expected = []
    for row, pos in zip(cosine, labels):
        neg = torch.ones(40, dtype=torch.bool)
        neg[pos] = False
        expected.append(
            torch.log1p(torch.exp(-s * (row[pos] - m)).sum()) + torch.log1p(torch.exp(s * row[neg]).sum())
        )
    got = mlcd_loss(cosine.double(), labels, scale=s, margin=m)
    assert torch.allclose(got, torch.stack(expected).double().mean(), rtol=1e-6)


@pytest.mark.parametrize(
    ("resize", "box", "expected", "kept"),
    [
        ("squash", [0, 0, 100, 50], [0, 0, 28, 28], True),  # a 200x100 image squashed: the top-left quarter
        (
            "shortest_edge_crop",
            [100, 0, 300, 200],
            [0, 0, 56, 56],
            True,
        ),  # the centre square of a 400x200 image
        ("shortest_edge_crop", [0, 0, 90, 200], [0, 0, 0, 56], False),  # wholly in the cropped-off left
    ],
)
def test_boxes_follow_the_processors_square_view(resize, box, expected, kept):
    from fovea.pretrain.regions import view_boxes

    size = (200, 400) if resize != "squash" else (100, 200)
    moved, keep = view_boxes(torch.tensor([box]), size, 56, resize)
    assert moved[0].tolist() == pytest.approx(expected, abs=0.01) and bool(keep[0]) is kept


def test_a_view_box_sees_the_patches_of_the_pixels_the_processor_kept():
    """The view the processor makes and the box moved into it agree: a bright square in the image
    lands in the patches the moved box sees."""
    from PIL import Image

    from fovea.imaging.processor import ImageConfig, ImageProcessor
    from fovea.pretrain.regions import view_boxes

    image = Image.new("RGB", (400, 200))
    image.paste((255, 255, 255), (200, 50, 300, 150))  # a 100 px square, right of centre
    view = ImageProcessor(ImageConfig(size=56, mean=[0, 0, 0], std=[1, 1, 1]))([image]).pixels[0, 0]
    moved, _ = view_boxes(torch.tensor([[200, 50, 300, 150]]), (200, 400), 56, "shortest_edge_crop")
    seen = box_visibility(moved, (56, 56), (4, 4)).view(4, 4)
    bright = F.adaptive_avg_pool2d(view[None, None], (4, 4))[0, 0] > 0.5
    assert torch.equal(seen, bright)


@pytest.mark.parametrize("resize", ["squash", "shortest_edge_crop"])
def test_a_mask_goes_into_the_view_as_the_processor_moves_its_pixels(resize):
    """A mask in the square view covers the pixels the processor put there: the mask drawn as a
    bright shape, processed, is bright exactly where the moved mask is (up to resampling edges)."""
    import numpy as np
    from PIL import Image

    from fovea.imaging.processor import ImageConfig, ImageProcessor
    from fovea.pretrain.region_manifest import Region
    from fovea.pretrain.regions import region_visibility, view_mask

    mask = np.zeros((200, 400), dtype=bool)
    mask[40:160, 150:330] = True
    image = Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB")
    config = ImageConfig(size=56, mean=[0, 0, 0], std=[1, 1, 1], resize=resize, resample="nearest")
    view = ImageProcessor(config)([image]).pixels[0, 0] > 0.5
    moved = view_mask(mask, 56, resize)
    assert moved.shape == (56, 56) and (moved != view).float().mean() < 0.02
    box = region_visibility(Region((150, 40, 330, 160)), (200, 400), 56, resize, (4, 4), 0.5)
    region = Region((150, 40, 330, 160), mask)
    assert torch.equal(region_visibility(region, (200, 400), 56, resize, (4, 4), 0.5), box)
