"""`python -m voxfm <command> key=value ...`: the `voxfm` command (the launchers in scripts/ use this form)."""

from voxfm.pretrain.cli.main import main

raise SystemExit(main())
