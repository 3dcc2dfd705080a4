"""A training recipe planned from the dataset (nnU-Net's idea, made explicit).

`fingerprint` measures the dataset (splits, sizes, channels, class shares, intensities);
`decide` turns the fingerprint into config values, each with its reason, as pure functions;
`probe` times a few real training steps so `train.epochs` fits a time budget; `planfile`
writes the plan as a params file (reasons as YAML comments) and reads it back as overrides
(`segops run --plan`: params.yaml < plan < --set).
"""
