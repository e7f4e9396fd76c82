from gptomni_operator.cli import main

raise SystemExit(main())
