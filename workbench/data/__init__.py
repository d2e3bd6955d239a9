"""Images, benchmark sets, MATLAB-compatible resizing and training data.

``workbench.data.images``     read_image / write_image / mod_crop / list_images
``workbench.data.imresize``   MATLAB bicubic imresize (numpy) and imresize_torch
``workbench.data.benchmark``  load_set: paired HR/LR evaluation sets, the embedded Set5
``workbench.data.training``   PatchDataset and find_training_pairs for the training stages
``workbench.data.download``   DIV2K / Flickr2K download with resume and checksum verification
"""
from workbench.data.benchmark import (EMBEDDED_SETS, ImagePair, PairedSet, embedded_set_dir,
                                      load_set)
from workbench.data.images import IMAGE_SUFFIXES, list_images, mod_crop, read_image, write_image
from workbench.data.imresize import imresize

__all__ = ["EMBEDDED_SETS", "IMAGE_SUFFIXES", "ImagePair", "PairedSet", "embedded_set_dir",
           "imresize", "list_images", "load_set", "mod_crop", "read_image", "write_image"]
