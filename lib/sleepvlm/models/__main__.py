"""``python -m sleepvlm.models --port N``: the embedded chat-completions server (same options as
``sleepvlm serve``)."""

from .server import main

raise SystemExit(main())
