"""``python -m loopml.cli COMMAND``: how ``loopml up`` starts its runner (``serve``)."""

from loopml.cli.app import main

main()
