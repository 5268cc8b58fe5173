"""Runtime helpers several packages share (which steps log, collectives, the device timer): the lowest layer of
`pretrain/`, importing no other `voxfm.pretrain` sub-package, so that training, objectives, callbacks and benches
all depend on it and it on none of them."""
