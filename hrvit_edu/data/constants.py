"""Label conventions every dataset of the book shares."""
IGNORE_INDEX = 255      # label of pixels that count for nothing (loss, metrics): mmseg's convention
