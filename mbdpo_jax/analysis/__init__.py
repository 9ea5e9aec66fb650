"""Exact analyses on small MDPs, in float64: MnM's tabular model-policy bound (`tabular`) and the
incoherence of goal-conditioned policies (`incoherence`)."""
