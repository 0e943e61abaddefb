"""Preference pairs for DPO: answers sampled from an SFT adapter, ranked by a verifier."""
