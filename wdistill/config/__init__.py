"""The run configuration: its schema, loading with overrides, the shipped presets, and the
reference (docs/config.md) generated from the schema."""
from wdistill.config.load import apply_overrides, dump_config, load_config
from wdistill.config.presets import list_presets, preset_path
from wdistill.config.schema import DataSection, ModelSection, RunConfig, TermSection

__all__ = ["RunConfig", "DataSection", "ModelSection", "TermSection", "load_config", "dump_config",
           "apply_overrides", "list_presets", "preset_path"]
