from vrouter.cli import main

raise SystemExit(main())
