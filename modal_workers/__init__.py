"""Image fetching and decoding, the three views, and the embedders (in-process and on Modal)."""
