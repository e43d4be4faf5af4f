from cimsnap.cli.main import main

raise SystemExit(main())
