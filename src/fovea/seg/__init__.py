"""Referring segmentation (MLCD-Seg): a ``[SEG]`` token whose last hidden state prompts SAM's mask
decoder. `head`: SAM and the projection; `config`: what a model's config records; `model`: adding
the path to a model, the teacher-forced forward and `segment`; `losses`: BCE and Dice; `metrics`:
cIoU and gIoU; `pictures`: mask and overlay PNGs. Training records and demo scenes are in `data`
(`seg_records`, `seg_scenes`)."""
