"""Look inside a model or a trained run: the layer table, feature maps, Grad-CAM, the confusion matrix.

The parts: :mod:`.table` (layer table and multiply-adds, no data needed),
:mod:`.probes` (what a model computes on given images), :mod:`.plots` (the
figures), :mod:`.runs` (a finished run reloaded, and the files drawn from it).
The command line is :mod:`.cli` (``python -m ablate.inspect``).
"""

from .plots import confusion_figure, gradcam_figure, plot_feature_maps, write_confusion_csv
from .probes import InspectError, confusion_matrix, eval_mode, feature_maps, fixed_indices, get_layer, gradcam, predict
from .runs import INSPECT_DIR, LoadedRun, arm_panels, inspect_run, load_run
from .table import format_table, layer_table, model_report

__all__ = ["INSPECT_DIR", "InspectError", "LoadedRun", "arm_panels", "confusion_figure", "confusion_matrix",
           "eval_mode", "feature_maps", "fixed_indices", "format_table", "get_layer", "gradcam", "gradcam_figure",
           "inspect_run", "layer_table", "load_run", "model_report", "plot_feature_maps", "predict",
           "write_confusion_csv"]
