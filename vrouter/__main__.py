from vrouter.ops.cli import main

raise SystemExit(main())
