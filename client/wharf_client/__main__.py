"""``python -m wharf_client``: the same as the ``wharf`` command."""

from wharf_client.cli import main

main()
