from pretrain.cli.main import main

raise SystemExit(main())
