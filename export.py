#!/usr/bin/env python3
"""Convert llama2.c files and HuggingFace checkpoints into llama2rs model files.

    python export.py --hf DIR -o model.l2rs.safetensors [--quantize q4 --calibration text.txt]
    python export.py --llama2c stories260K.bin --tokenizer tok512.bin -o stories260K.l2rs.safetensors

The conversion lives in ``llama2rs.export``, the options in ``llama2rs.cli.export`` (also ``llama2rs export``); run ``--help`` for options.
"""

import sys

from llama2rs.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
