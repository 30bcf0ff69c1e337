"""`python -m bench`: the benchmark's entry point."""

from bench.run import main

raise SystemExit(main())
