"""otr-harness: does One-Token Rollout fine-tuning beat SFT — when, why, and at what cost?

Data flows one way: sweep file -> plan (RunSpecs) -> run directories -> results table -> report.
"""

__version__ = "0.1.0"
