"""Data: shards on disk, the embedded synthetic dataset, the DALI pipeline and a reference loader.

Knows no model and no engine: batches follow the contract of DESIGN.md, a dict of `audio`
(B, 1, frames, mel bins), `video` (B, 3, T, H, W), `label` (B, classes) and `key` (list of ids).
"""
