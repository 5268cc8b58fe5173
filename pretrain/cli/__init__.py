"""The `voxfm` command: one entry point, configs composed from `conf/`, errors mapped to exit codes."""
