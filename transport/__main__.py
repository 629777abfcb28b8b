"""`python -m agentcast.transport` runs the `agentcast` command line (for when the script is not on PATH).

Imports only `agentcast.transport.cli`.
"""
import sys

from .cli import main

sys.exit(main())
