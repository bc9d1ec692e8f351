from segformer.cli import main

raise SystemExit(main())
