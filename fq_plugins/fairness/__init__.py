"""Group confusion table, fairness metric plugins and differentiable regularizers."""
