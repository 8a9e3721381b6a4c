"""Crash-safe sharded FAISS store: shard writer, progress commit, storage backends, loader, checks."""
