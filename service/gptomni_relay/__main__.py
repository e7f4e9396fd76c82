from gptomni_relay.cli import main

raise SystemExit(main())
