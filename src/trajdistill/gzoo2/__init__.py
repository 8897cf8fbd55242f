"""Galaxy Zoo 2: build the curated GZoo2 / GZoo2_aug datasets and load them (algorithm.md section 7)."""
from .build import BuildOptions, GZoo2Warning, build_gzoo2, label_catalog, ranked, resolve_options
from .catalog import Catalog, read_catalog, read_mapping
from .cli import add_gzoo2_parser
from .classes import assign_labels, class_names, column_name, confidences
from .dataset import load_gzoo2_dir

__all__ = ["BuildOptions", "Catalog", "GZoo2Warning", "add_gzoo2_parser", "assign_labels",
           "build_gzoo2", "class_names", "column_name", "confidences", "label_catalog",
           "load_gzoo2_dir", "ranked", "read_catalog", "read_mapping", "resolve_options"]

