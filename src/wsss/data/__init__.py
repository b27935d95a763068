"""Datasets: readers for PASCAL VOC, COCO (VOC-style masks), custom folders; one manifest format."""
