"""Data: DigitScenes (embedded, generated), real folder datasets, and pictures."""
from .constants import IGNORE_INDEX
from .datasets import Augment, DataBundle, DigitScenes, digitscenes_bundle, rescaled_test_set
from .digitscenes import BACKGROUND, CLASS_NAMES, NUM_CLASSES, SceneConfig, Scenes, generate, load_scenes, source_pools
from .folder import SegmentationFolder
from .viz import colorize, show_predictions

__all__ = ["Augment", "DataBundle", "DigitScenes", "digitscenes_bundle", "rescaled_test_set", "BACKGROUND",
           "CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "SceneConfig", "Scenes", "generate", "load_scenes",
           "source_pools", "SegmentationFolder", "colorize", "show_predictions"]
