"""Shards to batches on the host: sources and their mix, finding shards, the region stream and the pool of
decoded volumes, host crops, the loaders and the one-copy feed to the device."""
