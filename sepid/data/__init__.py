"""Data: audio I/O, CSV manifests, data preparation, two-speaker mixtures, dataset pipelines."""
