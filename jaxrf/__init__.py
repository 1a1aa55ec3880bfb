"""jaxrf: theoretical, actual and effective receptive fields of JAX convolutional networks.

The public API is what this module re-exports; everything in ``jaxrf._*`` is internal.
"""

from importlib.metadata import PackageNotFoundError, version

from . import _xla as _xla  # first: guards XLA:CPU before any computation (see _xla)
from ._axis import Window as Window
from ._axis import same_padding as same_padding
from ._crop import Crop as Crop
from ._crop import crop_for_unit as crop_for_unit
from ._diagnostics import Diagnostics as Diagnostics
from ._diagnostics import resolution_diagnostics as resolution_diagnostics
from ._erf import EffectiveReceptiveField as EffectiveReceptiveField
from ._erf import effective_receptive_field as effective_receptive_field
from ._field import GlobalReceptiveFieldWarning as GlobalReceptiveFieldWarning
from ._field import LayerRecord as LayerRecord
from ._field import MisalignmentWarning as MisalignmentWarning
from ._field import Path as Path
from ._field import ReceptiveField as ReceptiveField
from ._fold import fold_constants as fold_constants
from ._fold import fold_convs as fold_convs
from ._images import ImageStream as ImageStream
from ._images import image_paths as image_paths
from ._images import load_images as load_images
from ._layers import Global as Global
from ._layers import Layer as Layer
from ._layers import Parallel as Parallel
from ._layers import from_layers as from_layers
from ._probe import ActualReceptiveField as ActualReceptiveField
from ._probe import NonFiniteGradientError as NonFiniteGradientError
from ._probe import NonFiniteGradientWarning as NonFiniteGradientWarning
from ._probe import actual_receptive_field as actual_receptive_field
from ._probe import gradient_map as gradient_map
from ._prune import prune_to_cone as prune_to_cone
from ._registry import register_rule as register_rule
from ._report import LayerReport as LayerReport
from ._report import LayerReportRow as LayerReportRow
from ._report import layer_report as layer_report
from ._stats import AreaRatio as AreaRatio
from ._stats import LuoSize as LuoSize
from ._stats import area_ratio as area_ratio
from ._stats import centroid as centroid
from ._stats import centroid_offset as centroid_offset
from ._stats import erf_std as erf_std
from ._stats import luo_size as luo_size
from ._stats import share_inside as share_inside
from ._structural import structural_primitives as structural_primitives
from ._support import SupportMap as SupportMap
from ._support import support_map as support_map
from ._table import layer_table as layer_table
from ._trace import receptive_field as receptive_field

try:
    __version__ = version("jaxrf")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
