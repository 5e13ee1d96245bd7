import sys

from edge_irst.cli import main

sys.exit(main())
