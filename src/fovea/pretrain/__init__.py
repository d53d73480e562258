"""Vision-encoder pretraining by cluster discrimination (UNICOM, MLCD), the pipeline in order:

data.py        images from folders, file lists and img2dataset tar shards, each with a stable id
features.py    teacher embeddings (`fovea pretrain features`): float16 parts + an index, resumable
cluster.py     spherical k-means with faiss, one or two levels (`fovea pretrain cluster`)
assign.py      each image's L most similar centres, exactly (`fovea pretrain assign`)
steps.py       those two steps as folders
losses.py      MLCD's loss and the combined-margin softmax, as pure functions
partial_fc.py  class centres sharded over processes, sampled negatives, distributed log-sum-exp
encoder.py     tower + embedding head; export as a tower directory for `fovea train`
recipe.py      `fovea pretrain train` recipes;  train.py  the trainer, on train/engine.py
probe.py       linear probe, kNN and retrieval R@1 on frozen features (`fovea pretrain probe`)
scenes.py, demo.py   `fovea demo pretrain`
"""
