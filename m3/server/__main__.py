import sys

from m3.server.cli import main

sys.exit(main())
