"""`segformer data check`: read every image and mask of every split once, in parallel, and say what is wrong.

Built as a linter, one module per step:

- `scan`: worker processes decode each sample and send back a small summary (value histogram or colours, size,
  modes, per-channel histogram); rasters are read whole, pair by pair (`scan_rasters`: label values, band sums,
  nodata share, grid);
- `aggregate`: the summaries add up into a `DataReport` (counts per split, missing, orphan and unreadable files,
  size mismatches, mask modes, label values with pixel and image counts, image sizes and channel statistics,
  class pixel counts and suggested class weights);
- `rules`: a table of small rules `rule(facts) -> Finding | None`, walked in order, each finding naming the flag
  that fixes it;
- `render`: the report as text (`DataReport.format`); `DataReport.to_dict`/`write_json` give it as JSON;
- `run`: `check_dataset`, which lists the splits of a layout (`layouts.LAYOUTS`) and drives the steps.
"""

from ..layouts import dataset_splits
from .aggregate import (
    SEVERITIES,
    WEIGHT_METHODS,
    DataReport,
    Diagnosis,
    Finding,
    SplitReport,
    class_pixel_counts,
    class_weights,
)
from .render import write_palette_template
from .rules import RULES, Rule, diagnose
from .run import check_dataset
from .scan import raster_summary, scan, scan_rasters, summarize

__all__ = [
    "RULES",
    "SEVERITIES",
    "WEIGHT_METHODS",
    "DataReport",
    "Diagnosis",
    "Finding",
    "Rule",
    "SplitReport",
    "check_dataset",
    "class_pixel_counts",
    "class_weights",
    "dataset_splits",
    "diagnose",
    "raster_summary",
    "scan",
    "scan_rasters",
    "summarize",
    "write_palette_template",
]
