"""Speech separation: separator loading and chunked separation, mixture datasets, metrics and the evaluation loop."""
