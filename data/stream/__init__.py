"""Shards to batches on the host: sources and their mix, finding shards, decoding samples (skipping damaged ones)
and cutting their regions, the region stream and the pool of decoded volumes, collating batches, the loaders and the
one-copy feed to the device."""
