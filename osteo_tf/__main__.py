"""``python -m osteo_tf``: the ``osteo-tf`` command line (:func:`osteo_tf.cli.main`)."""

import sys

from osteo_tf.cli import main

if __name__ == "__main__":
    sys.exit(main())
