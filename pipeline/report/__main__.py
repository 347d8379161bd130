from pipeline.report import main

raise SystemExit(main())
