"""Analyses: exact ones on small MDPs, in float64 (MnM's tabular model-policy bound, `tabular`; the
incoherence of goal-conditioned policies, `incoherence`), and the sampled incoherence of a learned
continuous-action policy against its own critic (`deep_incoherence`, float32, used at evaluation)."""
