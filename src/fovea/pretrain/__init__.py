"""Vision-encoder pretraining by cluster discrimination (UNICOM, MLCD): losses and label
assignment so far; features, clustering, PartialFC and encoder training follow (issue 13)."""
