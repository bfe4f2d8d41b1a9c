"""COCO panoptic format: reading, writing, synthesis and splits."""
