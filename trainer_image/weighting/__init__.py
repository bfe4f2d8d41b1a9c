"""Loss-weighting strategies, one module per strategy class, behind one registry.

Importing the package registers the built-in strategies (``registry.py``), in
the order ``adaseg train --strategy`` lists them: equal, published, published-ratios, fixed,
uncertainty, gradnorm.
"""

# isort: off
from trainer_image.weighting import fixed, uncertainty, gradnorm  # noqa: F401
# isort: on
