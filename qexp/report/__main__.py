from qexp.report.cli import main

raise SystemExit(main())
