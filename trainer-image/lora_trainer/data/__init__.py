"""Dataset preparation: discover, decode, crop, bucket, caption, split and order samples.

The training loop uses `prepare_dataset` once, then per epoch `epoch_order` and
`make_batches`, and per draw `CaptionBuilder.build` and `maybe_flip`.
"""

from .autocaption import Captioner, load_captioner
from .buckets import make_buckets, nearest_size, parse_size, target_size
from .captions import MAX_CAPTION_CHARS, CaptionBuilder, read_caption, split_tags
from .crop import crop_to, focus_window
from .dataset import PreparedDataset, Sample, prepare_dataset, split_validation
from .discover import IMAGE_SUFFIXES, discover
from .images import MAX_PIXELS, UnusableImage, load_image, to_rgb
from .order import epoch_order, make_batches, maybe_flip

__all__ = [
    "IMAGE_SUFFIXES", "MAX_CAPTION_CHARS", "MAX_PIXELS", "CaptionBuilder", "Captioner", "PreparedDataset",
    "Sample", "UnusableImage", "crop_to", "discover", "epoch_order", "focus_window", "load_captioner",
    "load_image", "make_batches", "make_buckets", "maybe_flip", "nearest_size", "parse_size",
    "prepare_dataset", "read_caption", "split_tags", "split_validation", "target_size", "to_rgb",
]
