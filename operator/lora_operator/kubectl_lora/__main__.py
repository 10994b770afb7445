"""``python -m lora_operator.kubectl_lora``: the plugin without its console script."""

import sys

from . import main

sys.exit(main())
