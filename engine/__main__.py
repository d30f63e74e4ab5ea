"""`python -m engine` entry point."""

from engine.cli.parser import main

raise SystemExit(main())
