"""C{python -m majordomo ...} is the C{majordomo} command."""

from majordomo.cli import main

main()
