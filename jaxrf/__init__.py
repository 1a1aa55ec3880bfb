"""jaxrf: theoretical, actual and effective receptive fields of JAX convolutional networks.

The public API is what this module re-exports; everything in ``jaxrf._*`` is internal.
"""

from importlib.metadata import PackageNotFoundError, version

from ._axis import Window as Window
from ._axis import same_padding as same_padding
from ._crop import Crop as Crop
from ._crop import crop_for_unit as crop_for_unit
from ._field import GlobalReceptiveFieldWarning as GlobalReceptiveFieldWarning
from ._field import LayerRecord as LayerRecord
from ._field import MisalignmentWarning as MisalignmentWarning
from ._field import Path as Path
from ._field import ReceptiveField as ReceptiveField
from ._layers import Global as Global
from ._layers import Layer as Layer
from ._layers import Parallel as Parallel
from ._layers import from_layers as from_layers

try:
    __version__ = version("jaxrf")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
