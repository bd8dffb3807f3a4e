"""`python -m chaos run [--quick] [--scenario NAME ...]`: see chaos/run.py."""

from chaos.run import main

raise SystemExit(main())
