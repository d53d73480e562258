"""Referring segmentation (MLCD-Seg): a ``[SEG]`` token whose last hidden state prompts SAM's mask
decoder. `head` holds SAM and the projection, `losses` the mask losses, `metrics` cIoU and gIoU."""
