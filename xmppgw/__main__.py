from xmppgw.cli import main

raise SystemExit(main())
